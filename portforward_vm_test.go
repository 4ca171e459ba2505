package cocoon_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cocoon-runtime/cocoon"
	"github.com/cocoon-runtime/cocoon/internal/portforward"
	"github.com/cocoon-runtime/cocoon/internal/testutil"
)

// httpPod runs a sandbox in the pod netns of a fresh netnsPair whose
// container serves "hello-from-pod" over HTTP on 127.0.0.1:8080 only.
func httpPod(t *testing.T) (*cocoon.Runtime, *cocoon.Sandbox, string) {
	t.Helper()
	rt, env := newRuntime(t)
	pod, _ := netnsPair(t)
	id := testutil.UniqueID(t)
	cfg := sandboxConfig(env, id, bundle(t, "sh", "-c",
		"mkdir -p /tmp/www && echo hello-from-pod > /tmp/www/index.html && exec httpd -f -p 127.0.0.1:8080 -h /tmp/www"))
	cfg.NetNS = filepath.Join("/var/run/netns", pod)
	sb, err := rt.RunSandbox(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	cleanup(t, rt, id)
	t.Cleanup(func() { sb.Release() })
	return rt, sb, cfg.NetNS
}

func TestPortForwardLocalhost(t *testing.T) {
	ctx := context.Background()
	_, sb, ns := httpPod(t)
	f, err := sb.ForwardLocalhost(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()

	// Both of containerd's tries reach the server, which listens on the
	// guest's 127.0.0.1 only: ::1 falls back to it, as containerd falls
	// back from one family to the other.
	var body string
	for i := 0; ; i++ {
		// The container may not be listening yet.
		body, err = testutil.HTTPGetIn(ns, "127.0.0.1:8080")
		if err == nil || i == 50 {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err != nil || body != "hello-from-pod" {
		t.Fatalf("GET through 127.0.0.1:8080 in the netns: %q, %v", body, err)
	}
	// The pod reaches its own localhost, as a sidecar does.
	if out, st := execIn(t, sb, sb.ID(), "wget", "-q", "-O", "-", "http://127.0.0.1:8080/"); st.Code != 0 || strings.TrimSpace(out) != "hello-from-pod" {
		t.Errorf("wget of the pod's own localhost: exit %d, %q", st.Code, out)
	}
	if body, err := testutil.HTTPGetIn(ns, "[::1]:8080"); err != nil || body != "hello-from-pod" {
		t.Fatalf("GET through [::1]:8080 in the netns: %q, %v", body, err)
	}

	// Ten at once, each its own full response.
	errs := make(chan error, 10)
	for range 10 {
		go func() {
			body, err := testutil.HTTPGetIn(ns, "127.0.0.1:8080")
			if err == nil && body != "hello-from-pod" {
				err = fmt.Errorf("body %q", body)
			}
			errs <- err
		}()
	}
	for range 10 {
		if err := <-errs; err != nil {
			t.Errorf("one of ten at once: %v", err)
		}
	}

	// A port nobody listens on: reset at once.
	began := time.Now()
	if _, err := testutil.HTTPGetIn(ns, "127.0.0.1:8081"); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("a port nobody listens on: %v, want a reset", err)
	}
	t.Logf("refused port reset after %v", time.Since(began).Round(time.Millisecond))

	// The library's own dial, without the netns.
	c, err := sb.DialPort(ctx, 8080)
	if err != nil {
		t.Fatal(err)
	}
	if body, err := testutil.HTTPGet(c); err != nil || body != "hello-from-pod" {
		t.Errorf("GET through DialPort: %q, %v", body, err)
	}
	c.Close()
	if _, err := sb.DialPort(ctx, 8081); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("DialPort to a port nobody listens on: %v, want ECONNREFUSED", err)
	}

	// Close leaves nothing in the netns.
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if left, err := portforward.Installed(ns); err != nil || left {
		t.Errorf("after Close, the forwarder's table in the netns: %v, %v", left, err)
	}
	if _, err := testutil.HTTPGetIn(ns, "127.0.0.1:8080"); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("after Close: %v, want refused", err)
	}
}

// A VM that died: connections are reset at once, not left hanging.
func TestPortForwardVMKilled(t *testing.T) {
	ctx := context.Background()
	_, sb, ns := httpPod(t)
	f, err := sb.ForwardLocalhost(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st := sb.Status(ctx)
	if len(st.HypervisorPids) == 0 {
		t.Fatal("no hypervisor pid")
	}
	if err := syscall.Kill(st.HypervisorPids[0], syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-sb.Monitor()
	began := time.Now()
	_, err = testutil.HTTPGetIn(ns, "127.0.0.1:8080")
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("with the VM dead: %v, want a reset", err)
	}
	if d := time.Since(began); d > 5*time.Second {
		t.Errorf("with the VM dead, the connection ended after %v", d)
	}
}
