// Package protocol holds the ttrpc services spoken between the Cocoon host
// and the cocoon-agent inside the sandbox VM.
//
// The Go files are generated from agent.proto; regenerate them with
// `go generate ./agent/protocol` (needs protoc, protoc-gen-go and
// protoc-gen-go-ttrpc on PATH).
package protocol

//go:generate protoc --go_out=. --go_opt=paths=source_relative --go-ttrpc_out=. --go-ttrpc_opt=paths=source_relative agent.proto

// Version is the protocol version this tree speaks. Bump it on any
// incompatible change; the host refuses an agent with a different version.
const Version = 6
