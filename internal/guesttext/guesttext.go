// Package guesttext makes text that came from a guest safe to put into
// errors, logs and terminals.
//
// A guest may own its kernel: anything it prints or sends can carry
// terminal escape sequences (to rewrite what an operator sees, retitle a
// window, or worse), control characters, invalid UTF-8, or simply be
// huge. Both functions drop all of that and bound the length.
package guesttext

import (
	"unicode"
	"unicode/utf8"
)

// Line returns s with at most max bytes of printable text: escape
// sequences, control characters (newline and tab too), invalid UTF-8 and
// Unicode format characters (such as bidirectional overrides) are
// dropped. Use it for one-line fields: names, versions, error messages.
func Line(s string, max int) string { return clean(s, max, false) }

// Text is Line but keeps newlines and tabs, for multi-line output such as
// the tail of a guest console.
func Text(s string, max int) string { return clean(s, max, true) }

func clean(s string, max int, multiline bool) string {
	if max <= 0 {
		return ""
	}
	b := make([]byte, 0, min(len(s), max))
	for i := 0; i < len(s); {
		if s[i] == 0x1b { // ESC: drop the whole sequence, not just ESC
			i = skipEscape(s, i)
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		i += size
		keep := false
		switch {
		case r == utf8.RuneError && size <= 1:
		case r == '\n' || r == '\t':
			keep = multiline
		case r == 0x9b: // C1 CSI, the 8-bit form of ESC [
			i = skipCSI(s, i)
		default:
			keep = unicode.IsPrint(r)
		}
		if !keep {
			continue
		}
		if len(b)+size > max {
			break
		}
		b = utf8.AppendRune(b, r)
	}
	return string(b)
}

// skipEscape returns the index after the escape sequence that starts with
// the ESC at s[i].
func skipEscape(s string, i int) int {
	i++ // ESC
	if i >= len(s) {
		return i
	}
	switch s[i] {
	case '[': // CSI: parameters and intermediates, then one final byte
		return skipCSI(s, i+1)
	case ']', 'P', 'X', '^', '_': // OSC, DCS, SOS, PM, APC: a string up to BEL or ST
		for i++; i < len(s); i++ {
			if s[i] == 0x07 {
				return i + 1
			}
			if s[i] == 0x1b && i+1 < len(s) && s[i+1] == '\\' {
				return i + 2
			}
		}
		return i
	default:
		// Two-byte sequences and those with intermediates (ESC ( B):
		// skip intermediates (0x20-0x2f) and one final byte.
		for i < len(s) && s[i] >= 0x20 && s[i] <= 0x2f {
			i++
		}
		if i < len(s) {
			i++
		}
		return i
	}
}

// skipCSI returns the index after the CSI sequence whose parameters start
// at s[i].
func skipCSI(s string, i int) int {
	for ; i < len(s); i++ {
		if c := s[i]; c >= 0x40 && c <= 0x7e {
			return i + 1
		} else if c < 0x20 || c > 0x7e {
			return i // malformed: stop at the first byte that cannot belong
		}
	}
	return i
}
