package persist

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

type doc struct {
	Name  string
	Count int
}

func TestSaveLoadDeleteList(t *testing.T) {
	s, err := New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Save("b", doc{"b", 2}); err != nil {
		t.Fatal(err)
	}
	if err := s.Save("a", doc{"a", 1}); err != nil {
		t.Fatal(err)
	}
	if err := s.Save("a", doc{"a", 3}); err != nil {
		t.Fatal(err)
	}
	var d doc
	if err := s.Load("a", &d); err != nil || d.Count != 3 {
		t.Fatalf("Load = %+v, %v", d, err)
	}
	keys, err := s.List()
	if err != nil || len(keys) != 2 || keys[0] != "a" || keys[1] != "b" {
		t.Fatalf("List = %v, %v", keys, err)
	}
	st, _ := os.Stat(filepath.Join(s.dir, "a.json"))
	if st.Mode().Perm() != 0o600 {
		t.Errorf("state file mode %v", st.Mode())
	}
	if err := s.Delete("a"); err != nil {
		t.Fatal(err)
	}
	if err := s.Load("a", &d); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Load after Delete = %v", err)
	}
	// No temporary files are left behind.
	entries, _ := os.ReadDir(s.dir)
	for _, e := range entries {
		if e.Name() != "b.json" {
			t.Errorf("unexpected file %s", e.Name())
		}
	}
}

func TestInvalidKeys(t *testing.T) {
	s, _ := New(t.TempDir())
	for _, k := range []string{"", "../x", "a/b", ".hidden", "a..b"} {
		if err := s.Save(k, doc{}); err == nil {
			t.Errorf("Save(%q) accepted", k)
		}
	}
}

func TestLockExcludes(t *testing.T) {
	s, _ := New(t.TempDir())
	unlock, err := s.Lock(context.Background(), "k")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := s.Lock(ctx, "k"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("second Lock = %v, want a timeout", err)
	}
	unlock()
	unlock2, err := s.Lock(context.Background(), "k")
	if err != nil {
		t.Fatalf("Lock after unlock: %v", err)
	}
	unlock2()
}

// Deleting a key removes its lock file while others wait on it: each
// waiter must then lock the file that is there now, so that no two ever
// hold the lock at once.
func TestLockSurvivesDelete(t *testing.T) {
	s, err := New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	var holders, most atomic.Int32
	hold := func() {
		n := holders.Add(1)
		for {
			m := most.Load()
			if n <= m || most.CompareAndSwap(m, n) {
				break
			}
		}
		time.Sleep(100 * time.Millisecond)
		holders.Add(-1)
	}
	unlock, err := s.Lock(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	contend := func() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			u, err := s.Lock(ctx, "k")
			if err != nil {
				t.Error(err)
				return
			}
			hold()
			u()
		}()
	}
	contend() // waits on the file that is about to be deleted
	time.Sleep(50 * time.Millisecond)
	s.Save("k", doc{"k", 1})
	if err := s.Delete("k"); err != nil {
		t.Fatal(err)
	}
	unlock()
	for range 3 { // newcomers find no lock file and create one
		contend()
	}
	wg.Wait()
	if m := most.Load(); m != 1 {
		t.Fatalf("%d processes held the lock at once", m)
	}
}

func TestTryLock(t *testing.T) {
	s, err := New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	unlock, err := s.TryLock("k")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.TryLock("k"); !errors.Is(err, ErrLocked) {
		t.Fatalf("second TryLock: %v, want ErrLocked", err)
	}
	unlock()
	u, err := s.TryLock("k")
	if err != nil {
		t.Fatalf("TryLock after unlock: %v", err)
	}
	u()
}
