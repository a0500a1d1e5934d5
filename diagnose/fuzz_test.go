package diagnose

import (
	"strings"
	"testing"
)

// FuzzParseNofile: any limits text gives -1 or a non-negative limit.
func FuzzParseNofile(f *testing.F) {
	f.Add("Limit Soft Hard Units\nMax open files            1024                 524288               files\n")
	f.Add("Max open files unlimited unlimited files\n")
	f.Add("Max open files -5 1 files\n")
	f.Fuzz(func(t *testing.T, text string) {
		if v := parseNofile(strings.NewReader(text)); v < -1 {
			t.Fatalf("%q: limit %d", text, v)
		}
	})
}
