package integration

import (
	"bytes"
	"context"
	"crypto/md5"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cocoon-runtime/cocoon/internal/ctrtest"
	"github.com/cocoon-runtime/cocoon/internal/portforward"
	"github.com/cocoon-runtime/cocoon/internal/testutil"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// podNetNS is the network namespace path of a CRI pod, from its verbose
// status (the runtime spec of its sandbox container).
func podNetNS(t *testing.T, ctx context.Context, rs runtimeapi.RuntimeServiceClient, podID string) string {
	t.Helper()
	st, err := rs.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: podID, Verbose: true})
	if err != nil {
		t.Fatal(err)
	}
	var info struct {
		RuntimeSpec struct {
			Linux struct {
				Namespaces []struct{ Type, Path string }
			}
		}
	}
	if err := json.Unmarshal([]byte(st.Info["info"]), &info); err != nil {
		t.Fatalf("pod status info: %v", err)
	}
	for _, ns := range info.RuntimeSpec.Linux.Namespaces {
		if ns.Type == "network" && ns.Path != "" {
			return ns.Path
		}
	}
	t.Fatal("the pod's spec has no network namespace path")
	return ""
}

// TestCRIPortForward: kubectl port-forward's path through containerd's
// CRI (PortForward, then the port-forward protocol over SPDY on the URL
// it returns) reaches a web server in a Cocoon pod that listens in the
// VM, for a port the pod never declared; ten connections at once each
// get their own full response; a port nobody listens on fails at once;
// removing the pod leaves nothing of the forwarder.
func TestCRIPortForward(t *testing.T) {
	e := needContainerd(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	rs, _, closeCRI, err := e.ctrd.CRI(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer closeCRI()
	pod, err := runPod(t, ctx, e, rs, "forwarded", nil)
	if err != nil {
		t.Fatalf("RunPodSandbox: %v\n%s", err, e.ctrd.LogTail(30))
	}
	netns := podNetNS(t, ctx, rs, pod.id)
	if ok, err := portforward.Installed(netns); err != nil || !ok {
		t.Fatalf("the pod's netns %s has no forwarder table: %v, %v", netns, ok, err)
	}
	cid := pod.start(t, ctx, "web", "httpd", "-f", "-p", "8080", "-h", "/bin")
	size, err := strconv.Atoi(pod.exec(t, ctx, cid, "stat", "-c", "%s", "/bin/busybox"))
	if err != nil {
		t.Fatal(err)
	}
	// kubectl's session: a first GET through it succeeded.
	pf, err := ctrtest.WaitPortForward(ctx, rs, pod.id, 8080, "/busybox", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	defer pf.Close()
	get := func(port int32) (string, ctrtest.Result, error) {
		var body bytes.Buffer
		r, err := pf.Get(port, "/busybox", &body)
		return body.String(), r, err
	}
	body, r, err := get(8080)
	if err != nil || r.ErrorStream != "" || len(body) != size {
		t.Fatalf("GET through port-forward: %d body bytes (want %d), error stream %q, %v", len(body), size, r.ErrorStream, err)
	}
	if want := pod.exec(t, ctx, cid, "md5sum", "/bin/busybox"); !strings.HasPrefix(want, fmt.Sprintf("%x", md5.Sum([]byte(body)))) {
		t.Errorf("the body through port-forward differs from the file: md5 %x, in the pod %s", md5.Sum([]byte(body)), want)
	}

	began := time.Now()
	errs := make(chan error, 10)
	for range 10 {
		go func() {
			body, r, err := get(8080)
			if err == nil && (r.ErrorStream != "" || len(body) != size) {
				err = fmt.Errorf("%d body bytes (want %d), error stream %q", len(body), size, r.ErrorStream)
			}
			errs <- err
		}()
	}
	for range 10 {
		if err := <-errs; err != nil {
			t.Errorf("one of ten at once: %v", err)
		}
	}
	t.Logf("ten GETs of %d bytes at once through port-forward: %v", size, time.Since(began).Round(time.Millisecond))

	began = time.Now()
	body, r, err = get(8081)
	if err == nil || len(body) != 0 || !strings.Contains(r.ErrorStream, "8081") {
		t.Errorf("a port nobody listens on: %d bytes, error stream %q, %v; want no response and an error naming the port", len(body), r.ErrorStream, err)
	}
	if d := time.Since(began); d > 5*time.Second {
		t.Errorf("a port nobody listens on failed after %v", d)
	}
	t.Logf("refused port: %q after %v", r.ErrorStream, time.Since(began).Round(time.Millisecond))

	if _, err := rs.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: pod.id}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(netns); err == nil {
		if ok, err := portforward.Installed(netns); err == nil && ok {
			t.Errorf("the stopped pod's netns %s keeps the forwarder table", netns)
		}
	}
	if _, err := rs.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: pod.id}); err != nil {
		t.Fatal(err)
	}
	if pids := testutil.ProcessesMentioning(pod.id); len(pids) != 0 {
		t.Errorf("processes of the removed pod left: %v", pids)
	}
}
