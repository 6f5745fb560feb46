//go:build tools

// Package tools pins h2spec (github.com/summerwind/h2spec) as a module
// dependency so scripts/build-peers builds it from the Go module proxy at
// the version in go.mod. The proxy serves v2.2.1+incompatible (the newest
// release it has).
package tools

import _ "github.com/summerwind/h2spec/cmd/h2spec"
