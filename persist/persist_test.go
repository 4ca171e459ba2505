package persist

import (
	"context"
	"errors"
	"os"
	"path/filepath"
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
