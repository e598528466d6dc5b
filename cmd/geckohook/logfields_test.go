package main

import (
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// A log field's name says its unit: zerolog's Dur prints a bare number
// (milliseconds, as newLogger pins), so a duration field is named *_ms, and
// a field holding a size is named *_bytes.
func TestLogFieldsNameTheirUnit(t *testing.T) {
	dur := regexp.MustCompile(`\.(?:Dur|Durs|TimeDiff)\("([^"]*)"`)
	size := regexp.MustCompile(`\.(?:Int|Int32|Int64|Uint|Uint32|Uint64|Float64)\("([^"]*(?:size|bytes|len)[^"]*)"`)
	root := filepath.Join("..", "..")
	checked := 0
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == "testdata" || strings.HasPrefix(d.Name(), ".")) && path != root {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		src, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		checked++
		for _, m := range dur.FindAllSubmatch(src, -1) {
			if !strings.HasSuffix(string(m[1]), "_ms") {
				t.Errorf("%s: duration field %q: name it %s_ms (the value is in milliseconds) or log a string", path, m[1], m[1])
			}
		}
		for _, m := range size.FindAllSubmatch(src, -1) {
			if !strings.HasSuffix(string(m[1]), "_bytes") {
				t.Errorf("%s: size field %q: name it *_bytes", path, m[1])
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if checked < 20 {
		t.Fatalf("only %d Go files checked under %s", checked, root)
	}
}
