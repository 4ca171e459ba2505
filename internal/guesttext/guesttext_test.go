package guesttext

import (
	"strings"
	"testing"
	"unicode/utf8"
)

func TestLineDropsEscapesAndControls(t *testing.T) {
	cases := map[string]string{
		"plain":                    "plain",
		"red\x1b[31mtext\x1b[0m":   "redtext",
		"clear\x1b[2J\x1b[H":       "clear",
		"title\x1b]0;owned\x07x":   "titlex",
		"title\x1b]0;owned\x1b\\y": "titley",
		"charset\x1b(Bz":           "charsetz",
		"nul\x00bel\x07bs\x08":     "nulbelbs",
		"two\nlines\ttab\r":        "twolinestab",
		"c1\u009b31mcsi":           "c1csi",
		"bidi\u202eevil":           "bidievil",
		"bad\xff\xfeutf8":          "badutf8",
		"caf\u00e9":                "caf\u00e9",
		"dangling\x1b":             "dangling",
		"dangling\x1b[12":          "dangling",
	}
	for in, want := range cases {
		if got := Line(in, 100); got != want {
			t.Errorf("Line(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestTextKeepsNewlinesAndTabs(t *testing.T) {
	in := "[    0.1] boot\r\n\x1b[1;31mpanic\x1b[0m:\tsomething\n"
	want := "[    0.1] boot\npanic:\tsomething\n"
	if got := Text(in, 1000); got != want {
		t.Errorf("Text = %q, want %q", got, want)
	}
}

func TestBounded(t *testing.T) {
	long := strings.Repeat("\u00e9", 1000) // two bytes each
	for _, max := range []int{0, 1, 2, 3, 64, 65} {
		got := Line(long, max)
		if len(got) > max || !utf8.ValidString(got) || len(got) < max-1 {
			t.Errorf("Line(long, %d) = %d bytes, valid %v", max, len(got), utf8.ValidString(got))
		}
	}
}

func FuzzClean(f *testing.F) {
	f.Add("a\x1b[31mb\x1b]0;t\x07c", 20)
	f.Fuzz(func(t *testing.T, s string, max int) {
		max = max % 4096
		for _, got := range []string{Line(s, max), Text(s, max)} {
			if len(got) > max && !(max <= 0 && got == "") {
				t.Fatalf("%d bytes > max %d", len(got), max)
			}
			if !utf8.ValidString(got) || strings.ContainsAny(got, "\x1b\r\x00\x07\u009b") {
				t.Fatalf("unsafe output %q", got)
			}
		}
	})
}
