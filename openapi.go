// Package postbus holds what belongs to the project as a whole: the HTTP
// API document, embedded so the binary serves it at /openapi.yaml.
package postbus

import _ "embed"

// OpenAPI is openapi.yaml, the contract of the HTTP API.
//
//go:embed openapi.yaml
var OpenAPI []byte
