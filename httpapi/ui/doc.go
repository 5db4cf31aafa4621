// Package ui is postbus's web dashboard, served at /ui/ by every process
// that serves the API (broker, dev, name server, replica member). Its
// assets are plain HTML, CSS and JavaScript modules embedded in the binary:
// no build step, nothing fetched from another host.
//
// The dashboard is a client of the public API and nothing else: it calls
// /v1/... with the token the user typed, kept in the browser's session
// storage (a login box opens when the API answers 401). It has no route of
// its own besides its files, and no access to anything a token could not
// ask for with curl.
//
// # Escaping
//
// Every string that comes from the API (topic and group names, message
// bodies, errors, URLs) reaches the page as a text node or an attribute
// value set through the DOM (dom.js's h), never through innerHTML: a
// message body or a topic name is the first thing a hostile user writes
// script into. The Content-Security-Policy the handler sends forbids
// inline script and any origin but this one, as a second wall.
//
// Tests: ui_test.go checks what the handler serves; browser_test.go in
// cmd/postbus drives headless Chromium through every page against a real
// broker.
package ui
