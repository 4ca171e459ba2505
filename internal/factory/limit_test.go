package factory

import (
	"context"
	"errors"
	"os"
	"testing"
	"time"

	"github.com/cocoon-runtime/cocoon/hypervisor"
	"golang.org/x/sys/unix"
)

// usedAt sets the last use of tp.
func usedAt(t *testing.T, tp template, when time.Time) {
	t.Helper()
	if err := os.WriteFile(tp.path(usedFile), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(tp.path(usedFile), when, when); err != nil {
		t.Fatal(err)
	}
}

// fakeBoot makes a template on disk as make would.
func fakeBoot(_ context.Context, tp template, cfg hypervisor.Config) error {
	os.MkdirAll(tp.dir, 0o700)
	os.WriteFile(tp.memory, nil, 0o600)
	writeSources(tp.dir, cfg)
	return os.WriteFile(tp.path(stateFile), nil, 0o600)
}

// Making a template over the limit evicts the least recently used
// template that is not in use, and no other.
func TestTemplateLimitEvictsLeastRecentlyUsed(t *testing.T) {
	f := testFactory(t, 3)
	f.boot = fakeBoot
	ctx := context.Background()
	now := time.Now()
	// (Templates with recorded sources: prune, which runs after a template
	// is made, keeps them.)
	oldest := fakeTemplate(t, f, "0000000000000001", &hypervisor.Config{})
	busy := fakeTemplate(t, f, "0000000000000002", &hypervisor.Config{})   // older still, but in use
	recent := fakeTemplate(t, f, "0000000000000003", &hypervisor.Config{}) // the most recent
	usedAt(t, oldest, now.Add(-2*time.Hour))
	usedAt(t, busy, now.Add(-3*time.Hour))
	usedAt(t, recent, now.Add(-time.Minute))
	lock, err := f.lock(ctx, busy, unix.LOCK_SH)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()

	newer := f.template("0000000000000004")
	if err := f.ensure(ctx, newer, hypervisor.Config{}); err != nil {
		t.Fatal(err)
	}
	if !newer.ready() {
		t.Fatal("the new template was not made")
	}
	if !gone(oldest) {
		t.Error("the least recently used template not in use was kept")
	}
	if gone(busy) || gone(recent) {
		t.Error("a template in use, or a more recent one, was evicted")
	}
	if n := len(f.templates("")); n != 3 {
		t.Errorf("%d templates, want the limit of 3", n)
	}
}

// Restoring from a template records its use, so that a template in
// steady use is not the one evicted.
func TestUseRecordsLastUse(t *testing.T) {
	f := testFactory(t, 4)
	ctx := context.Background()
	tp := fakeTemplate(t, f, "0000000000000005", nil)
	usedAt(t, tp, time.Now().Add(-time.Hour))
	before := tp.lastUse()
	lock, err := f.use(ctx, tp, hypervisor.Config{})
	if err != nil {
		t.Fatal(err)
	}
	lock.Close()
	if !tp.lastUse().After(before) {
		t.Errorf("last use %v not after %v", tp.lastUse(), before)
	}
}

// When every template is in use, none is evicted and no template is made:
// the caller boots without one.
func TestTemplateLimitAllInUse(t *testing.T) {
	f := testFactory(t, 2)
	ctx := context.Background()
	for _, key := range []string{"0000000000000001", "0000000000000002"} {
		lock, err := f.lock(ctx, fakeTemplate(t, f, key, nil), unix.LOCK_SH)
		if err != nil {
			t.Fatal(err)
		}
		defer lock.Close()
	}
	tp := f.template("0000000000000003")
	err := f.ensure(ctx, tp, hypervisor.Config{})
	if !errors.Is(err, errNoRoom) {
		t.Fatalf("ensure over the limit with every template in use: %v, want errNoRoom", err)
	}
	if !gone(tp) {
		t.Error("the template that found no room left files")
	}
	if n := len(f.templates("")); n != 2 {
		t.Errorf("%d templates, want 2", n)
	}
}
