// Package httpapi is postbus's HTTP API: the chi router, its handlers and
// middleware. It translates HTTP to calls on package broker and owns no
// state of its own.
//
// Every route is listed once, in routes.go, and in openapi.yaml at the
// repository root; a test walks the router and fails on any route the
// document does not describe (or the other way round), and checks recorded
// responses against the document's schemas.
//
// Errors are RFC 9457 problems (application/problem+json) with a stable
// lower_snake "code"; statusOf in problem.go is the one table from codes to
// statuses. Every request body is read through a size limit.
package httpapi
