package main

import "errors"

// exitCode is returned by a subcommand that wants the process to exit with a
// given status without printing an error (it already reported its result).
type exitCode int

func (e exitCode) Error() string { return "exit status" }

func asExitCode(err error, ec *exitCode) bool { return errors.As(err, ec) }
