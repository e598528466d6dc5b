package main

import (
	"bytes"
	"errors"
	"flag"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/geckohook/geckohook/internal/testenv"
)

// helpFlags returns the flags cmd -h lists, each with its value's name.
func helpFlags(t *testing.T, cmd string) map[string]string {
	t.Helper()
	_, fs, err := parseConfig(cmd, []string{"-h"}, func(string) string { return "" })
	if !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("%s -h: %v", cmd, err)
	}
	var b bytes.Buffer
	printHelp(&b, cmd, fs)
	got := map[string]string{}
	for _, m := range regexp.MustCompile(`(?m)^  -(\S+)(?: (\S+))?$`).FindAllStringSubmatch(b.String(), -1) {
		got[m[1]] = m[2]
	}
	if len(got) == 0 {
		t.Fatalf("%s -h lists no flags:\n%s", cmd, b.String())
	}
	return got
}

// Each command lists exactly the flags it uses.
func TestEachCommandListsItsFlags(t *testing.T) {
	common := []string{"config", "log-format", "log-level"}
	kafkaRedis := []string{"kafka-brokers", "partitions", "pprof-listen", "redis-addr", "redis-password", "redis-prefix", "replication-factor"}
	policy := []string{"allow-http", "allow-private-targets", "events-catalog"}
	delivery := []string{"consumer-group", "dead-max", "dead-retention", "delivery-header", "dlq-topic", "isolation-level",
		"kafka-session-timeout", "max-conns-per-host", "max-retries", "max-retry-after", "outcomes-topic", "request-timeout",
		"resource-base", "retry-lease", "retry-window", "signature-header", "window", "workers"}
	mail := []string{"coordinator-group", "delete-after", "mail-at", "mail-from", "mail-grace", "mail-outbox", "mail-templates",
		"sweep-every", "smtp-addr", "smtp-password", "smtp-user"}
	f := func(cmd string, want ...[]string) {
		t.Helper()
		all := slices.Concat(want...)
		slices.Sort(all)
		all = slices.Compact(all)
		var got []string
		for name := range helpFlags(t, cmd) {
			got = append(got, name)
		}
		slices.Sort(got)
		if !slices.Equal(got, all) {
			t.Errorf("geckohook %s -h lists\n%q\nwant\n%q", cmd, got, all)
		}
	}
	f("dispatcher", common, kafkaRedis, policy, delivery, []string{"events-topic", "metrics-listen"})
	f("api", common, kafkaRedis, policy, []string{"admin-token", "api-listen", "events-topic", "secret-overlap",
		"delivery-header", "events-partitioner", "isolation-level", "max-conns-per-host", "recover-max", "request-timeout",
		"resource-base", "signature-header", "portal-url", "portal-session", "delete-after", "mail-at", "mail-templates"})
	f("coordinator", common, kafkaRedis, mail, []string{"kafka-session-timeout", "metrics-listen", "outcomes-topic"})
	f("broker", common, []string{"data-dir", "dlq-topic", "embedded-kafka-listen", "events-topic", "outcomes-topic", "partitions", "pprof-listen"})
	f("all", common, kafkaRedis, policy, delivery, mail, []string{"admin-token", "api-listen", "data-dir",
		"embedded-kafka-listen", "embedded-redis-listen", "events-partitioner", "events-topic", "recover-max", "secret-overlap",
		"portal-url", "portal-session"})
}

// The flag package takes a back-quoted word of a usage string as the
// value's name (-allow-http all): every name -h shows is a kind of value.
func TestHelpNamesEveryValueForItsKind(t *testing.T) {
	allowed := map[string]bool{"": true, "string": true, "int": true, "duration": true, "addr": true, "list": true, "path": true}
	for _, cmd := range commands {
		for name, arg := range helpFlags(t, cmd.name) {
			if !allowed[arg] {
				t.Errorf("geckohook %s -h: -%s %s: the value's name is not a kind of value (back-quotes in its usage?)", cmd.name, name, arg)
			}
		}
	}
}

// flagRoles names every flag, and every flag it names exists and is used
// by some command.
func TestFlagTableCoversEveryFlag(t *testing.T) {
	fs := newFlagSet("all", &config{})
	fs.VisitAll(func(f *flag.Flag) {
		if flagRoles[f.Name] == 0 {
			t.Errorf("flag --%s is in no command's row of flagRoles", f.Name)
		}
	})
	for name := range flagRoles {
		if fs.Lookup(name) == nil {
			t.Errorf("flagRoles names --%s, which is no flag", name)
		}
	}
}

// One config file and environment serve every command: a command ignores
// the others' settings there, and refuses them on its command line.
func TestOtherCommandsSettingsAreIgnoredOutsideTheCommandLine(t *testing.T) {
	file := testenv.TempFile(t, "geckohook.yaml", []byte(`
kafka-brokers: k:9092
admin-token: from-file
mail-at: "25:00"
workers: 7
`))
	env := map[string]string{"GECKOHOOK_SMTP_ADDR": "smtp:25", "GECKOHOOK_API_LISTEN": "0.0.0.0:1"}
	c, _, err := parseConfig("dispatcher", []string{"--config", file}, func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	if c.KafkaBrokers != "k:9092" || c.Workers != 7 {
		t.Errorf("the dispatcher's own settings not read: brokers %q, workers %d", c.KafkaBrokers, c.Workers)
	}
	if c.AdminToken != "" || c.SMTPAddr != "" || c.APIListen != "127.0.0.1:8080" || c.set["admin-token"] != "" {
		t.Errorf("other commands' settings applied: admin token %q, smtp %q, api %q", c.AdminToken, c.SMTPAddr, c.APIListen)
	}
	// The coordinator does use mail-at: its bad value is an error there.
	if _, _, err := parseConfig("coordinator", []string{"--config", file}, func(string) string { return "" }); err == nil || !strings.Contains(err.Error(), "mail-at") {
		t.Errorf("coordinator with mail-at 25:00: %v", err)
	}
	// A key no command knows is still an error.
	bad := testenv.TempFile(t, "bad.yaml", []byte("admin-tokn: x\n"))
	if _, _, err := parseConfig("dispatcher", []string{"--config", bad}, func(string) string { return "" }); err == nil || !strings.Contains(err.Error(), "unknown settings admin-tokn") {
		t.Errorf("unknown key: %v", err)
	}
}

// A mistake on the command line is one line and a pointer to -h, exit 2.
func TestWrongFlagIsOneLine(t *testing.T) {
	f := func(want string, args ...string) {
		t.Helper()
		var stdout, stderr bytes.Buffer
		cmd := exec.Command(binary, args...)
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 2 {
			t.Errorf("geckohook %v: %v, want exit code 2", args, err)
		}
		if stderr.String() != want+"\n" || stdout.Len() != 0 {
			t.Errorf("geckohook %v printed\n%q\n%q\nwant\n%q", args, stdout.String(), stderr.String(), want)
		}
	}
	f("geckohook dispatcher: unknown flag --foo; see geckohook dispatcher -h", "dispatcher", "--foo")
	f("geckohook dispatcher: --admin-token is a flag of all, api, not of dispatcher; see geckohook dispatcher -h",
		"dispatcher", "--kafka-brokers", "k:9092", "--admin-token", "x")
	f("geckohook api: --workers is a flag of all, dispatcher, not of api; see geckohook api -h", "api", "-workers=8")
	f("geckohook broker: --redis-addr is a flag of all, dispatcher, api, coordinator, not of broker; see geckohook broker -h",
		"broker", "--redis-addr", "r:6379")
	f(`geckohook all: invalid value "many" for flag -partitions: parse error; see geckohook all -h`, "all", "--partitions", "many")
	f("geckohook all: unexpected arguments: stray; see geckohook all -h", "all", "stray")
	f(`geckohook: unknown command "frobnicate"; see geckohook -h`, "frobnicate")

	// -h is the help, on stdout, exit 0.
	out, err := exec.Command(binary, "dispatcher", "-h").Output()
	if err != nil || !strings.HasPrefix(string(out), "geckohook dispatcher: ") || !strings.Contains(string(out), "  -workers int\n") {
		t.Errorf("dispatcher -h: %v\n%s", err, out)
	}
}
