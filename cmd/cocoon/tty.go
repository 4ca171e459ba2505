package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// isTerminal reports whether f is a terminal.
func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// makeRaw puts terminal f in raw mode, as cfmakeraw(3) does, so that every
// key (^C included) goes to the container's terminal, which does the line
// editing and echoing. It returns the function that restores the mode.
func makeRaw(f *os.File) (restore func() error, err error) {
	fd := int(f.Fd())
	old, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return nil, fmt.Errorf("get terminal mode of %s: %w", f.Name(), err)
	}
	raw := *old
	raw.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON
	raw.Oflag &^= unix.OPOST
	raw.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
	raw.Cflag &^= unix.CSIZE | unix.PARENB
	raw.Cflag |= unix.CS8
	raw.Cc[unix.VMIN] = 1
	raw.Cc[unix.VTIME] = 0
	if err := unix.IoctlSetTermios(fd, unix.TCSETS, &raw); err != nil {
		return nil, fmt.Errorf("set raw mode on %s: %w", f.Name(), err)
	}
	return func() error {
		if err := unix.IoctlSetTermios(fd, unix.TCSETS, old); err != nil {
			return fmt.Errorf("restore terminal mode of %s: %w", f.Name(), err)
		}
		return nil
	}, nil
}

// terminalSize returns the size of the first of files that is a terminal.
func terminalSize(files ...*os.File) (*specs.Box, bool) {
	for _, f := range files {
		ws, err := unix.IoctlGetWinsize(int(f.Fd()), unix.TIOCGWINSZ)
		if err == nil && ws.Col > 0 && ws.Row > 0 {
			return &specs.Box{Width: uint(ws.Col), Height: uint(ws.Row)}, true
		}
	}
	return nil, false
}

// parseConsoleSize parses WIDTHxHEIGHT, in columns and rows.
func parseConsoleSize(s string) (*specs.Box, error) {
	w, h, ok := strings.Cut(strings.ToLower(s), "x")
	width, err1 := strconv.ParseUint(w, 10, 16)
	height, err2 := strconv.ParseUint(h, 10, 16)
	if !ok || err1 != nil || err2 != nil || width == 0 || height == 0 {
		return nil, fmt.Errorf("parse console size %q: want WIDTHxHEIGHT, such as 80x24", s)
	}
	return &specs.Box{Width: uint(width), Height: uint(height)}, nil
}
