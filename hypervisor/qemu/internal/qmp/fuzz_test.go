package qmp

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"
)

const greeting = `{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7"}, "capabilities": ["oob"]}}` + "\n"

// FuzzClient plays a QEMU that sends arbitrary bytes on the QMP socket (a
// guest that took over QEMU could): the client reads them as its greeting,
// replies and events, and must never panic nor hang. The input is split at
// NUL bytes: the first piece is sent at once, each next one after the
// client sent a command, so that replies can meet their command. A QEMU
// that never answers keeps a command waiting until its context ends, as it
// should; so that every input runs fast, the server follows each piece
// with a reply of its own to the command, and closes after the commands
// the test sends (and ends the greeting with a newline too). Every call
// then ends, with a reply or an error.
func FuzzClient(f *testing.F) {
	// qmp_capabilities, then the four commands below.
	const clientCommands = 5
	session := func(pieces ...string) []byte { return []byte(strings.Join(pieces, "\x00")) }
	f.Add(session(greeting,
		`{"return": {}, "id": "1"}`+"\n",
		`{"return": {"status": "running", "singlestep": false, "running": true}, "id": "2"}`+"\n",
		`{"return": [{"thread-id": 1234, "props": {"core-id": 0}, "qom-path": "/machine/unattached/device[0]", "cpu-index": 0, "target": "x86_64"}], "id": "3"}`+"\n",
		`{"return": {"status": "completed"}, "id": "4"}`+"\n",
		`{"return": {}, "id": "5"}`+"\n"+
			`{"timestamp": {"seconds": 1700000000, "microseconds": 1}, "event": "DEVICE_DELETED", "data": {"path": "/machine/peripheral/d0", "device": "d0"}}`+"\n"))
	f.Add(session(greeting,
		`{"return": {}, "id": "1"}`+"\n"+`{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP"}`+"\n",
		`{"error": {"class": "GenericError", "desc": "nope"}, "id": "2"}`+"\n",
		`{"return": "not a list", "id": "3"}`+"\n"+`{"return": {}, "id": "3"}`+"\n",
		`not json at all`+"\n"+`{"event": 7, "id": "4"}`+"\n"+`{"return": {"status": ["x"]}, "id": "4"}`+"\n",
		`{"return": {}, "id": "5"}`+"\n"+`{"event": "DEVICE_DELETED", "data": "d0"}`+"\n"))
	f.Add(session(greeting, `{"error": {"class": "CommandNotFound", "desc": "x"}, "id": "1"}`+"\n"))
	f.Add(session(greeting, `{"return": {}, "id": "1"}`, "\n"))
	f.Add(session(`{"QMP": 1}` + "\n"))
	f.Add(session(greeting))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, in []byte) {
		cli, srv := net.Pipe()
		go func() {
			defer srv.Close()
			pieces := bytes.Split(in, []byte{0})
			if _, err := srv.Write(append(pieces[0], '\n')); err != nil {
				return
			}
			pieces = pieces[1:]
			commands := bufio.NewScanner(srv)
			for range clientCommands {
				if !commands.Scan() {
					return
				}
				var req struct{ ID string }
				if err := json.Unmarshal(commands.Bytes(), &req); err != nil {
					t.Errorf("the client sent %q: %v", commands.Bytes(), err)
					return
				}
				var p []byte
				if len(pieces) > 0 {
					p, pieces = pieces[0], pieces[1:]
				}
				if _, err := srv.Write(fmt.Appendf(p, "\n{\"return\": {}, \"id\": %q}\n", req.ID)); err != nil {
					return
				}
			}
		}()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c, err := New(ctx, cli)
		if err != nil {
			if ctx.Err() != nil {
				t.Fatalf("New hung: %v", err)
			}
			cli.Close()
			return
		}
		defer c.Close()

		check := func(command string, err error) {
			t.Helper()
			if ctx.Err() != nil {
				t.Fatalf("%s hung: %v", command, err)
			}
			var qe *Error
			if errors.As(err, &qe) && qe.Command != command {
				t.Fatalf("%s: error names command %q", command, qe.Command)
			}
		}
		_, err = c.QueryStatus(ctx)
		check("query-status", err)
		_, err = c.QueryCPUs(ctx)
		check("query-cpus-fast", err)
		_, err = c.QueryMigrate(ctx)
		check("query-migrate", err)
		check("device_del", c.DeviceDel(ctx, "d0"))

		// The server closed its end: the reader stops, and then every
		// command fails with ErrClosed.
		select {
		case <-c.Done():
		case <-ctx.Done():
			t.Fatal("the client did not see the connection end")
		}
		for ev := range c.Events() {
			if ev.Name == "" {
				t.Fatalf("event without a name: %+v", ev)
			}
		}
		if err := c.Stop(ctx); !errors.Is(err, ErrClosed) {
			t.Fatalf("stop on a closed connection: %v", err)
		}
	})
}
