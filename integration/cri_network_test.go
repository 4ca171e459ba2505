package integration

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cocoon-runtime/cocoon/internal/ctrtest"
	"github.com/cocoon-runtime/cocoon/internal/storage"
	"github.com/cocoon-runtime/cocoon/internal/testutil"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// bridgeEnv starts a containerd of the test's own whose CNI network is the
// bridge, host-local and portmap plugins: a bridge of the test's own, and
// pod addresses from subnet.0/24 (such as "10.235.3"). It returns the
// containerd, the bridge's name and the host-local lease directory; all of
// it is removed when the test ends.
func bridgeEnv(t *testing.T, subnet string) (e *env, br, leases string) {
	t.Helper()
	vmEnv := testutil.NeedVM(t)
	ctrtest.Need(t, ctrtest.Options{Containerd: os.Getenv("COCOON_CONTAINERD")})
	for _, p := range []string{"bridge", "host-local", "portmap", "loopback"} {
		if _, err := os.Stat(filepath.Join("/usr/lib/cni", p)); err != nil {
			testutil.Unavailable(t, "CNI", "no %s plugin (apt-get install containernetworking-plugins)", p)
		}
	}
	if _, err := exec.LookPath("iptables"); err != nil {
		testutil.Unavailable(t, "CNI", "no iptables, which the portmap plugin needs")
	}
	br = fmt.Sprintf("ccbr%d", os.Getpid()%100000)
	leases, err := os.MkdirTemp("", "cocoon-cni-leases-")
	if err != nil {
		t.Fatal(err)
	}
	conf := fmt.Sprintf(`{"cniVersion": "1.0.0", "name": "cocoon-bridge", "plugins": [
  {"type": "bridge", "bridge": %q, "isGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {"type": "host-local", "dataDir": %q, "ranges": [[{"subnet": "%s.0/24"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
  {"type": "portmap", "capabilities": {"portMappings": true}},
  {"type": "loopback"}]}`, br, leases, subnet)
	e, err = startEnv(vmEnv, map[string]string{"10-bridge.conflist": conf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := e.ctrd.Stop(ctx); err != nil {
			t.Errorf("stop containerd: %v", err)
		}
		for _, pid := range testutil.ProcessesMentioning(e.stateDir) {
			t.Errorf("leftover process %d", pid)
			syscall.Kill(pid, syscall.SIGKILL)
		}
		storage.RemoveUnmounted(e.dir)
		exec.Command("ip", "link", "del", br).Run()
		os.RemoveAll(leases)
	})
	return e, br, leases
}

// iptablesMentioning counts the host's iptables rules that mention s.
func iptablesMentioning(t *testing.T, s string) int {
	t.Helper()
	out, err := exec.Command("iptables-save").CombinedOutput()
	if err != nil {
		t.Fatalf("iptables-save: %v: %s", err, out)
	}
	return strings.Count(string(out), s)
}

// httpGet fetches url from the host, retrying for a few seconds while the
// server comes up, and returns the status code and body length.
func httpGet(t *testing.T, url string) (int, int64) {
	t.Helper()
	client := http.Client{Timeout: 10 * time.Second}
	var err error
	for i := 0; i < 40; i++ {
		var resp *http.Response
		if resp, err = client.Get(url); err == nil {
			n, _ := io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			return resp.StatusCode, n
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Fatalf("GET %s from the host: %v", url, err)
	return 0, 0
}

// TestCRINetworkBridge: through containerd's CRI with the bridge,
// host-local and portmap CNI plugins, a pod's web server in a Cocoon VM
// answers on its pod IP from the host and on its hostPort; the container
// has the pod IP and the default route; a second pod reaches the first by
// IP; removing the pods leaves no lease, iptables rule, veth or tap.
func TestCRINetworkBridge(t *testing.T) {
	const subnet = "10.235.3"
	e, br, leases := bridgeEnv(t, subnet)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	rs, _, closeCRI, err := e.ctrd.CRI(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer closeCRI()

	hostPort := int32(20000 + os.Getpid()%10000)
	cfg := e.podConfig(t, "web")
	cfg.PortMappings = []*runtimeapi.PortMapping{{Protocol: runtimeapi.Protocol_TCP, ContainerPort: 8080, HostPort: hostPort}}
	web, err := runPodConfig(t, ctx, e, rs, "cocoon", cfg)
	if err != nil {
		t.Fatalf("RunPodSandbox: %v\n%s", err, e.ctrd.LogTail(30))
	}
	st, err := rs.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: web.id})
	if err != nil {
		t.Fatal(err)
	}
	ip := st.GetStatus().GetNetwork().GetIp()
	if !strings.HasPrefix(ip, subnet+".") {
		t.Fatalf("pod IP %q, want one in %s.0/24", ip, subnet)
	}
	cid := web.start(t, ctx, "httpd", "httpd", "-f", "-p", "8080", "-h", "/bin")
	if out := web.exec(t, ctx, cid, "ip", "-o", "-4", "addr", "show", "eth0"); !strings.Contains(out, "inet "+ip+"/24") {
		t.Errorf("container's eth0 lacks the pod IP %s: %s", ip, out)
	}
	if out := web.exec(t, ctx, cid, "ip", "route"); !strings.Contains(out, "default via "+subnet+".1 dev eth0") {
		t.Errorf("container has no default route via the bridge: %s", out)
	}
	if code, n := httpGet(t, "http://"+ip+":8080/busybox"); code != 200 || n < 100000 {
		t.Errorf("GET on the pod IP: %d, %d bytes", code, n)
	}
	if code, n := httpGet(t, fmt.Sprintf("http://%s.1:%d/busybox", subnet, hostPort)); code != 200 || n < 100000 {
		t.Errorf("GET on the hostPort: %d, %d bytes", code, n)
	}
	if n := iptablesMentioning(t, web.id); n == 0 {
		t.Errorf("no iptables rule of portmap mentions the pod %s", web.id)
	}

	// A second pod on the same bridge reaches the first by its IP.
	client, err := runPod(t, ctx, e, rs, "client", nil)
	if err != nil {
		t.Fatalf("RunPodSandbox client: %v", err)
	}
	ccid := client.start(t, ctx, "client", "sleep", "600")
	if out := client.exec(t, ctx, ccid, "sh", "-c", "wget -q -O - http://"+ip+":8080/busybox | wc -c"); out == "0" || out == "" {
		t.Errorf("second pod's GET of the first: %q bytes", out)
	}

	for _, p := range []*criPod{web, client} {
		if _, err := rs.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: p.id}); err != nil {
			t.Fatalf("StopPodSandbox: %v", err)
		}
		if _, err := rs.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: p.id}); err != nil {
			t.Fatalf("RemovePodSandbox: %v", err)
		}
	}
	if n := iptablesMentioning(t, web.id); n != 0 {
		t.Errorf("%d iptables rules of the removed pod left", n)
	}
	if l, _ := filepath.Glob(filepath.Join(leases, "cocoon-bridge", subnet+".*")); len(l) != 0 {
		t.Errorf("host-local leases left: %v", l)
	}
	if out, _ := exec.Command("ip", "-o", "link", "show", "master", br).CombinedOutput(); strings.TrimSpace(string(out)) != "" {
		t.Errorf("veths left on the bridge:\n%s", out)
	}
	if out, _ := exec.Command("ip", "-o", "link", "show").CombinedOutput(); strings.Contains(string(out), "cctap") {
		t.Errorf("taps left in the host netns:\n%s", out)
	}
}

// TestCtrWithNetNS: nerdctl-style, `ctr run --with-ns network:PATH` puts a
// Cocoon container on the network of a namespace the test made (a veth to
// a peer namespace): it has the address and exchanges TCP with the peer;
// nothing of Cocoon's stays in the namespace.
func TestCtrWithNetNS(t *testing.T) {
	e := needContainerd(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	tag := fmt.Sprintf("ccw%d", os.Getpid()%100000)
	pod, peer := tag+"-pod", tag+"-peer"
	sh := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v: %s", args, err, out)
		}
	}
	for _, ns := range []string{pod, peer} {
		sh("ip", "netns", "add", ns)
		t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	}
	sh("ip", "link", "add", "eth0", "netns", pod, "type", "veth", "peer", "name", "peer0", "netns", peer)
	sh("ip", "-n", pod, "addr", "add", "10.236.0.2/24", "dev", "eth0")
	sh("ip", "-n", pod, "link", "set", "eth0", "up")
	sh("ip", "-n", peer, "addr", "add", "10.236.0.1/24", "dev", "peer0")
	sh("ip", "-n", peer, "link", "set", "peer0", "up")
	got := filepath.Join(t.TempDir(), "got")
	srv := exec.Command("ip", "netns", "exec", peer, "sh", "-c", "echo from-peer | timeout 120 busybox nc -l -p 5001 > "+got)
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	defer srv.Process.Kill()

	cid := id(t)
	e.removeOnCleanup(t, cid)
	args := append([]string{"run", "--rm", "--with-ns", "network:/var/run/netns/" + pod}, e.runtimeFlags()...)
	args = append(args, ctrtest.BusyboxImage, cid, "sh", "-c", "ip -o -4 addr show eth0; echo from-container | nc -w 10 10.236.0.1 5001")
	stdout, stderr, err := e.ctrd.Ctr(ctx, args...)
	if err != nil {
		t.Fatalf("ctr run --with-ns: %v\nstdout %q\nstderr %q", err, stdout, stderr)
	}
	srv.Wait()
	if !strings.Contains(stdout, "inet 10.236.0.2/24") || !strings.Contains(stdout, "from-peer") {
		t.Errorf("container's output %q: want its address and the peer's line", stdout)
	}
	if b, _ := os.ReadFile(got); strings.TrimSpace(string(b)) != "from-container" {
		t.Errorf("peer got %q, want from-container", b)
	}
	out, _ := exec.Command("ip", "-n", pod, "-o", "link", "show").CombinedOutput()
	qd, _ := exec.Command("tc", "-n", pod, "qdisc", "show", "dev", "eth0").CombinedOutput()
	if strings.Contains(string(out), "cctap") || strings.Contains(string(qd), "ingress") {
		t.Errorf("Cocoon's tap or qdisc left in the namespace:\n%s\n%s", out, qd)
	}
	e.assertNoLeaks(t, cid)
}
