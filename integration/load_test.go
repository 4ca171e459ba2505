package integration

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/cocoon-runtime/cocoon/internal/ctrtest"
)

// 100 create/run/delete cycles through containerd and the shim, 4 at a
// time, with VM templates as the shim ships (ctr run --rm: a shim, a VM
// from the template, a container, then
// all of it removed): every container exits with its own code, and
// nothing is left behind.
func TestLoadCtrRun(t *testing.T) {
	e := needContainerd(t)
	cycles := 100
	if n, err := strconv.Atoi(os.Getenv("COCOON_LOAD_CYCLES")); err == nil && n > 0 {
		cycles = n // the run under a second containerd uses fewer
	}
	const parallel = 4
	conf := e.templatesConfig(t)
	base := id(t)
	start := time.Now()
	var wg sync.WaitGroup
	var mu sync.Mutex
	var failures []string
	for w := range parallel {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < cycles; i += parallel {
				cid := fmt.Sprintf("%s-%d", base, i)
				code := 20 + i%50
				ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
				args := []string{"run", "--rm", "--runtime", "io.containerd.cocoon.v2", "--runtime-config-path", conf}
				args = append(args, ctrtest.BusyboxImage, cid, "sh", "-c", fmt.Sprintf("exit %d", code))
				_, stderr, err := e.ctrd.Ctr(ctx, args...)
				cancel()
				got := 0
				if ce := (*ctrtest.CtrError)(nil); errors.As(err, &ce) {
					got = ce.ExitCode()
				} else if err != nil {
					got = -1
				}
				if got != code {
					mu.Lock()
					failures = append(failures, fmt.Sprintf("%s: exit %d, want %d: %v %s", cid, got, code, err, stderr))
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	if len(failures) > 0 {
		t.Fatalf("%d of %d cycles failed; first: %v\n%s", len(failures), cycles, failures[0], e.ctrd.LogTail(30))
	}
	t.Logf("%d cycles, %d at a time, in %v", cycles, parallel, time.Since(start).Round(time.Millisecond))
	for i := range cycles {
		e.assertNoLeaks(t, fmt.Sprintf("%s-%d", base, i))
	}
}
