package cocoon_test

import (
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// The README's layout table names every package of the tree, and only
// packages that exist: a row is a package directory ("`internal/vm`") or
// a directory and everything below it ("`bench/...`"); a directory of
// tests only, or a file, may have a row.
func TestREADMELayoutTable(t *testing.T) {
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	var rows []string
	cell := regexp.MustCompile("`([^`]+)`")
	for _, line := range strings.Split(string(readme), "\n") {
		if !strings.HasPrefix(line, "| `") {
			continue
		}
		first, _, _ := strings.Cut(strings.TrimPrefix(line, "| "), " |")
		first, _, _ = strings.Cut(first, "(") // "`.` (package `cocoon`)"
		for _, m := range cell.FindAllStringSubmatch(first, -1) {
			rows = append(rows, m[1])
		}
	}
	if len(rows) == 0 {
		t.Fatal("README has no layout table")
	}
	var pkgs, testPkgs []string // with code; with tests only
	err = filepath.WalkDir(".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && p != "." && (strings.HasPrefix(d.Name(), ".") || d.Name() == "testdata" || d.Name() == "bin") {
			return filepath.SkipDir
		}
		if dir := filepath.Dir(p); !d.IsDir() && strings.HasSuffix(p, ".go") {
			list := &pkgs
			if strings.HasSuffix(p, "_test.go") {
				list = &testPkgs
			}
			if !slices.Contains(*list, dir) {
				*list = append(*list, dir)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	covered := func(pkg string) bool {
		for _, r := range rows {
			if r == pkg || strings.HasSuffix(r, "/...") && strings.HasPrefix(pkg+"/", strings.TrimSuffix(r, "...")) {
				return true
			}
		}
		return false
	}
	for _, p := range pkgs {
		if !covered(p) {
			t.Errorf("package %s is not in the README's layout table", p)
		}
	}
	for _, r := range rows {
		dir := strings.TrimSuffix(strings.TrimSuffix(r, "/..."), "/")
		if st, err := os.Stat(dir); err != nil {
			t.Errorf("the README's layout table names %s, which does not exist", r)
		} else if !st.IsDir() {
			continue // a file: a script, a document
		} else if !strings.HasSuffix(r, "/...") && !slices.Contains(pkgs, dir) && !slices.Contains(testPkgs, dir) {
			t.Errorf("the README's layout table names %s, which is not a package", r)
		}
	}
}
