// Package doctest checks that the README and docs/ say what is true: the
// signature examples verify geckohook's own signatures, the walkthrough
// runs against `geckohook all`, and every link resolves.
package doctest

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/geckohook/geckohook/engine/contract"
	"github.com/geckohook/geckohook/internal/testenv"
)

const root = "../.."

func readme(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// section returns the README's text from heading to the next "## ".
func section(t *testing.T, doc, heading string) string {
	t.Helper()
	i := strings.Index(doc, heading+"\n")
	if i < 0 {
		t.Fatalf("README has no %q", heading)
	}
	rest := doc[i+len(heading):]
	if j := strings.Index(rest, "\n## "); j >= 0 {
		rest = rest[:j]
	}
	return rest
}

var fence = regexp.MustCompile("(?s)```([a-z]*)\n(.*?)```")

// blocks returns the fenced code blocks of text in the given language.
func blocks(text, lang string) []string {
	var out []string
	for _, m := range fence.FindAllStringSubmatch(text, -1) {
		if m[1] == lang {
			out = append(out, m[2])
		}
	}
	return out
}

// The README is a front door: short, in the project's own words, and every
// relative link in it and in docs/ leads somewhere.
func TestDocsStandAlone(t *testing.T) {
	doc := readme(t)
	if n := strings.Count(doc, "\n"); n > 200 {
		t.Errorf("README.md has %d lines; keep it under 200 and put depth in docs/", n)
	}
	files, err := filepath.Glob(filepath.Join(root, "docs", "*.md"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no docs/*.md (%v)", err)
	}
	files = append(files, filepath.Join(root, "README.md"))
	link := regexp.MustCompile(`\]\(([^)#\s]+)(#[^)]*)?\)`)
	// Written so that this file does not match itself.
	outside := regexp.MustCompile(`\.\./s[h]ared|(?i)\bthe s[e]ed\b|s[e]ed/webhooks|named in the i[s]sue`)
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if m := outside.Find(b); m != nil {
			t.Errorf("%s refers to something outside the project: %q", f, m)
		}
		for _, m := range link.FindAllStringSubmatch(string(b), -1) {
			target := m[1]
			if strings.Contains(target, "://") || strings.HasPrefix(target, "mailto:") {
				continue
			}
			if _, err := os.Stat(filepath.Join(filepath.Dir(f), target)); err != nil {
				t.Errorf("%s links to %s, which does not exist", f, target)
			}
		}
	}
}

// Each signature example of the README, run by its own language, accepts a
// signature geckohook made and refuses a tampered body, another secret and
// a missing header.
func TestSignatureExamples(t *testing.T) {
	text := section(t, readme(t), "## What a receiver gets")
	secret := "s3cr3t-of-the-app"
	body := []byte(`{"object_id":1234567,"event":"fulfillments.create","timestamp":1546272000,"resource_url":"https://api.tradegecko.com/fulfillments/1234567.json"}`)
	sig := string(contract.NewSigner(secret).AppendSignature(nil, body))
	type verdict struct {
		name, secret string
		body         []byte
		header       string
		want         string
	}
	cases := []verdict{
		{"geckohook's signature", secret, body, sig, "true"},
		{"tampered body", secret, append(bytes.Clone(body[:len(body)-1]), ' ', '}'), sig, "false"},
		{"another secret", "another", body, sig, "false"},
		{"no header", secret, body, "", "false"},
	}
	langs := []struct {
		lang, tool string
		run        func(t *testing.T, tool, code, dir string) []string // argv; args appended
	}{
		{"ruby", "ruby", func(t *testing.T, tool, code, dir string) []string {
			return []string{tool, "-e", code + "\nputs valid_signature?(ARGV[0], File.binread(ARGV[1]), ARGV[2])\n"}
		}},
		{"python", "python3", func(t *testing.T, tool, code, dir string) []string {
			return []string{tool, "-c", code + "\nimport sys\nprint(str(valid_signature(sys.argv[1].encode(), open(sys.argv[2], 'rb').read(), sys.argv[3])).lower())\n"}
		}},
		{"js", "node", func(t *testing.T, tool, code, dir string) []string {
			return []string{tool, "-e", code + "\nconst [s, f, h] = process.argv.slice(-3);\nconsole.log(String(validSignature(s, require('fs').readFileSync(f), h)));\n", "--"}
		}},
		{"go", "go", func(t *testing.T, tool, code, dir string) []string {
			src := "package main\n\n" + strings.Replace(code, "import (", "import (\n\t\"fmt\"\n\t\"os\"", 1) +
				"\nfunc main() {\n\tbody, err := os.ReadFile(os.Args[2])\n\tif err != nil {\n\t\tpanic(err)\n\t}\n\tfmt.Println(validSignature([]byte(os.Args[1]), body, os.Args[3]))\n}\n"
			bin := filepath.Join(dir, "verify")
			if err := os.WriteFile(filepath.Join(dir, "main.go"), []byte(src), 0o644); err != nil {
				t.Fatal(err)
			}
			build := exec.Command(tool, "build", "-o", bin, "main.go")
			build.Dir, build.Env = dir, append(os.Environ(), "GO111MODULE=off")
			if out, err := build.CombinedOutput(); err != nil {
				t.Fatalf("the Go example does not build: %v\n%s\n%s", err, out, src)
			}
			return []string{bin}
		}},
	}
	for _, l := range langs {
		t.Run(l.lang, func(t *testing.T) {
			code := blocks(text, l.lang)
			if len(code) != 1 {
				t.Fatalf("README has %d %s examples under \"What a receiver gets\", want 1", len(code), l.lang)
			}
			tool := testenv.Tool(t, l.tool)
			dir := t.TempDir()
			argv := l.run(t, tool, code[0], dir)
			for i, c := range cases {
				f := filepath.Join(dir, fmt.Sprintf("body-%d", i))
				if err := os.WriteFile(f, c.body, 0o644); err != nil {
					t.Fatal(err)
				}
				cmd := exec.Command(argv[0], append(argv[1:], c.secret, f, c.header)...)
				out, err := cmd.CombinedOutput()
				if err != nil {
					t.Fatalf("%s: %v\n%s", c.name, err, out)
				}
				if got := strings.TrimSpace(string(out)); got != c.want {
					t.Errorf("%s: the %s example says %q, want %s", c.name, l.lang, got, c.want)
				}
			}
		})
	}
}

// The README's walkthrough, as written, against `geckohook all` on free
// ports: the receiver it starts prints both events, signed with the
// application's secret.
func TestWalkthrough(t *testing.T) {
	for _, tool := range []string{"curl", "jq", "kcat", "python3"} {
		testenv.Tool(t, tool)
	}
	text := section(t, readme(t), "## Two-minute walkthrough")
	sh := blocks(text, "sh")
	if len(sh) == 0 {
		t.Fatal("the walkthrough has no sh block")
	}
	script := sh[0]

	bin := filepath.Join(t.TempDir(), "geckohook")
	if out, err := exec.Command("go", "build", "-o", bin, "../../cmd/geckohook").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	ports := make([]int, 3)
	for i := range ports {
		p, err := testenv.FreePort()
		if err != nil {
			t.Fatal(err)
		}
		ports[i] = p
	}
	api, kafka, receiver := fmt.Sprintf("127.0.0.1:%d", ports[0]), fmt.Sprintf("127.0.0.1:%d", ports[1]), fmt.Sprintf("127.0.0.1:%d", ports[2])
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	gh := exec.CommandContext(ctx, bin, "all", "--api-listen", api, "--embedded-kafka-listen", kafka)
	gh.Dir = t.TempDir()
	var ghOut lockedBuffer
	gh.Stdout, gh.Stderr = &ghOut, &ghOut
	if err := gh.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = gh.Process.Signal(syscall.SIGTERM)
		_ = gh.Wait()
		if t.Failed() {
			t.Logf("geckohook output:\n%s", ghOut.String())
		}
	}()
	var admin string
	testenv.WaitFor(t, 60*time.Second, func() error {
		m := regexp.MustCompile(`admin token [^:]*: (\S+)`).FindStringSubmatch(ghOut.String())
		if m == nil || !strings.Contains(ghOut.String(), "running") {
			return fmt.Errorf("geckohook not running yet")
		}
		admin = m[1]
		return nil
	})

	// The reader's own values replace the lines that say where things are.
	script = regexp.MustCompile(`(?m)^ADMIN=.*$`).ReplaceAllString(script, "ADMIN="+admin)
	script = regexp.MustCompile(`(?m)^API=.*$`).ReplaceAllString(script, fmt.Sprintf("API=%s KAFKA=%s RECEIVER=%s", api, kafka, receiver))
	run := exec.CommandContext(ctx, "bash", "-euo", "pipefail", "-c", script+"\necho \"SECRET=$SECRET\"\nwait\n")
	run.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	var out lockedBuffer
	run.Stdout, run.Stderr = &out, &out
	if err := run.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = syscall.Kill(-run.Process.Pid, syscall.SIGKILL); _ = run.Wait() }()

	testenv.WaitFor(t, 60*time.Second, func() error {
		s := out.String()
		for _, want := range []*regexp.Regexp{
			regexp.MustCompile(`(?m)^[0-9a-f-]{36} \S+ \{"object_id":1234567,"event":"fulfillments.create","timestamp":1546272000,"resource_url":"https://api.tradegecko.com/fulfillments/1234567.json"\}$`),
			regexp.MustCompile(`(?m)^[0-9a-f-]{36} \S+ \{"object_id":42,"event":"fulfillments.create",`),
			regexp.MustCompile(`(?m)^http://127\.0\.0\.1:\d+/portal/link/[A-Za-z0-9_-]{43}$`), // step 5
			regexp.MustCompile(`(?m)^SECRET=`),
		} {
			if !want.MatchString(s) {
				return fmt.Errorf("the receiver has not printed %s yet; output so far:\n%s", want, s)
			}
		}
		return nil
	})
	// Every line the receiver printed is signed with the application's secret.
	var secret string
	lines := 0
	sc := bufio.NewScanner(strings.NewReader(out.String()))
	var printed [][3]string
	for sc.Scan() {
		line := sc.Text()
		if v, ok := strings.CutPrefix(line, "SECRET="); ok {
			secret = v
			continue
		}
		f := strings.SplitN(line, " ", 3)
		if len(f) == 3 && strings.HasPrefix(f[2], "{") {
			printed = append(printed, [3]string{f[0], f[1], f[2]})
		}
	}
	for _, p := range printed {
		lines++
		want := string(contract.NewSigner(secret).AppendSignature(nil, []byte(p[2])))
		if p[1] != want || len(p[0]) != contract.DeliveryIDLen {
			t.Errorf("delivery %s: signature %s, want %s over %s", p[0], p[1], want, p[2])
		}
	}
	if lines != 2 {
		t.Fatalf("the receiver printed %d deliveries, want 2:\n%s", lines, out.String())
	}
}

// lockedBuffer is a bytes.Buffer safe for a process's writes and the
// test's reads.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
