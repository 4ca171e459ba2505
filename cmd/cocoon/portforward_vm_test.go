package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cocoon-runtime/cocoon/internal/testutil"
)

// TestPortForwardCommand: `cocoon port-forward ID 0:8080`, run in a
// network namespace of the test's own, makes a server on the guest's
// 127.0.0.1:8080 (a sandbox with no network at all) reachable on the
// port it prints; it ends cleanly on SIGINT; a bad mapping is refused.
func TestPortForwardCommand(t *testing.T) {
	c := needVM(t)
	ns := fmt.Sprintf("ccpf%d", os.Getpid()%100000)
	sh(t, "ip", "netns", "add", ns)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	sh(t, "ip", "-n", ns, "link", "set", "lo", "up")
	id := "pfcli"
	c.deleteAtEnd(t, id)
	c.ok(t, "run", "-d", "--boot-timeout", "2m", "--net", "none", "--bundle",
		c.bundle(t, "sh", "-c", "mkdir -p /tmp/w && echo hi-cli > /tmp/w/index.html && exec httpd -f -p 127.0.0.1:8080 -h /tmp/w"), id)

	if r := c.run(t, nil, "port-forward", id, "x:8080"); r.code == 0 || !strings.Contains(r.stderr, `"x:8080"`) {
		t.Errorf("a bad mapping: %v", r)
	}
	if r := c.run(t, nil, "port-forward", "--address", "localhost", id, "8080"); r.code == 0 || !strings.Contains(r.stderr, "not an IP address") {
		t.Errorf("a bad address: %v", r)
	}

	cmd := exec.Command("ip", "netns", "exec", ns, c.bin, "--root", c.root, "--data-dir", c.dataDir, "port-forward", id, "0:8080")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	m := regexp.MustCompile(`^Forwarding from (127\.0\.0\.1:\d+) -> 8080\n$`).FindStringSubmatch(line)
	if err != nil || m == nil {
		t.Fatalf("port-forward printed %q, %v; stderr %s", line, err, stderr.String())
	}
	var body string
	for i := 0; i < 50; i++ { // the server may not be up yet
		if body, err = testutil.HTTPGetIn(filepath.Join("/run/netns", ns), m[1]); err == nil {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err != nil || body != "hi-cli" {
		t.Fatalf("GET through cocoon port-forward: %q, %v", body, err)
	}

	cmd.Process.Signal(syscall.SIGINT)
	done := make(chan error, 1)
	go func() { io.Copy(io.Discard, out); done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("port-forward after SIGINT: %v, stderr %s", err, stderr.String())
		}
	case <-time.After(10 * time.Second):
		t.Error("port-forward did not end after SIGINT")
	}
}
