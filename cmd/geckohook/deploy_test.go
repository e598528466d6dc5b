package main

import (
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/geckohook/geckohook/internal/testenv"
)

// The deploy/ tree is checked against the binary it deploys: compose may
// only use flags and GECKOHOOK_* variables that exist, on roles that run
// the parts that read them; alerts and the dashboard may only use metrics
// geckohook exports; promtool must accept the rules and the config.

const deployDir = "../../deploy"

func readDeploy(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(deployDir, name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// flagParts names, for each flag that only some parts read, those parts
// (names from the parts table); a role given such a flag must run one of
// them. Flags not listed are read by parts every serving role runs (Kafka
// and Redis addresses, topics, the target policy, logging, profiles).
var flagParts = map[string][]string{
	"api-listen":            {"management API"},
	"admin-token":           {"management API"},
	"metrics-listen":        {"metrics and health endpoint"},
	"embedded-kafka-listen": {"embedded Kafka"},
	"data-dir":              {"embedded Kafka"},
	"embedded-redis-listen": {"embedded Redis"},
	"consumer-group":        {"dispatcher (drained)"},
	"request-timeout":       {"dispatcher (drained)"},
	"workers":               {"dispatcher (drained)"},
	"window":                {"dispatcher (drained)"},
	"max-conns-per-host":    {"dispatcher (drained)"},
	"max-retries":           {"dispatcher (drained)"},
	"max-retry-after":       {"dispatcher (drained)"},
	"isolation-level":       {"dispatcher (drained)"},
	"retry-lease":           {"dispatcher (drained)"},
	"retry-window":          {"dispatcher (drained)"},
	"dead-retention":        {"dispatcher (drained)"},
	"dead-max":              {"dispatcher (drained)"},
	"delivery-header":       {"dispatcher (drained)"},
	"signature-header":      {"dispatcher (drained)"},
	"resource-base":         {"dispatcher (drained)"},
	"kafka-session-timeout": {"dispatcher (drained)", "coordinator"},
	"outcomes-topic":        {"outcomes publisher", "coordinator"},
	"coordinator-group":     {"coordinator"},
	"delete-after":          {"coordinator"},
	"sweep-every":           {"coordinator"},
	"mail-at":               {"coordinator", "daily mail"},
	"mail-grace":            {"coordinator", "daily mail"},
	"mail-outbox":           {"daily mail"},
	"mail-templates":        {"daily mail"},
	"mail-from":             {"daily mail"},
	"smtp-addr":             {"daily mail"},
	"smtp-user":             {"daily mail"},
	"smtp-password":         {"daily mail"},
}

// The table above names real flags and real parts, so a renamed flag or
// part shows here instead of silently weakening the compose check.
func TestFlagPartsNameRealFlagsAndParts(t *testing.T) {
	fs := newFlagSet("all", &config{})
	parts := map[string]bool{}
	for _, pt := range (&process{c: &config{}}).parts() {
		parts[pt.name] = true
	}
	for name, ps := range flagParts {
		if fs.Lookup(name) == nil {
			t.Errorf("flagParts names flag --%s, which geckohook does not define", name)
		}
		for _, p := range ps {
			if !parts[p] {
				t.Errorf("flagParts names part %q for --%s; no part has that name", p, name)
			}
		}
	}
}

type composeFile struct {
	Services map[string]composeService `yaml:"services"`
}

type composeService struct {
	Image           string         `yaml:"image"`
	Build           any            `yaml:"build"`
	Command         []string       `yaml:"command"`
	Entrypoint      any            `yaml:"entrypoint"`
	Environment     any            `yaml:"environment"`
	StopGracePeriod string         `yaml:"stop_grace_period"`
	Healthcheck     map[string]any `yaml:"healthcheck"`
}

// env returns the service's environment whether compose spells it as a
// map or as a list of NAME=value.
func (s composeService) env() (map[string]string, error) {
	out := map[string]string{}
	switch e := s.Environment.(type) {
	case nil:
	case map[string]any:
		for k, v := range e {
			out[k] = yamlScalar(v)
		}
	case []any:
		for _, kv := range e {
			k, v, _ := strings.Cut(fmt.Sprint(kv), "=")
			out[k] = v
		}
	default:
		return nil, fmt.Errorf("environment is a %T", e)
	}
	return out, nil
}

// geckohook reports whether the service runs geckohook's image.
func (s composeService) geckohook() bool {
	return s.Build != nil || strings.HasPrefix(s.Image, "geckohook")
}

// interpolate resolves compose's ${NAME:-default} to its default and any
// other ${...} (a value the operator must set) to a placeholder.
var composeVar = regexp.MustCompile(`\$\{([A-Za-z0-9_]+)(?:(:?[-?])([^}]*))?\}`)

func interpolate(s string) string {
	return composeVar.ReplaceAllStringFunc(s, func(m string) string {
		sub := composeVar.FindStringSubmatch(m)
		if strings.HasSuffix(sub[2], "-") {
			return sub[3]
		}
		return "set-by-operator"
	})
}

// geckohookService is a geckohook service of the compose file, with the
// configuration its role parses.
type geckohookService struct {
	name string
	role string
	c    *config
}

// checkCompose returns every problem of a compose file and the Prometheus
// configuration that scrapes it, in the geckohook services' use of
// geckohook's flags, listeners and health endpoints.
func checkCompose(composeYAML, prometheusYAML []byte) (services []geckohookService, problems []error) {
	bad := func(format string, args ...any) { problems = append(problems, fmt.Errorf(format, args...)) }
	var cf composeFile
	if err := yaml.Unmarshal(composeYAML, &cf); err != nil {
		bad("cannot parse compose file: %v", err)
		return nil, problems
	}
	names := make([]string, 0, len(cf.Services))
	for name := range cf.Services {
		names = append(names, name)
	}
	slices.Sort(names)
	targets, err := scrapeTargets(prometheusYAML)
	if err != nil {
		bad("%v", err)
	}
	roles := map[string]int{}
	for _, name := range names {
		s := cf.Services[name]
		if !s.geckohook() {
			continue
		}
		if s.Entrypoint != nil {
			bad("%s: sets an entrypoint; geckohook services run the image's geckohook", name)
		}
		if len(s.Command) == 0 {
			bad("%s: no command; the first word must be the role (api, dispatcher, coordinator)", name)
			continue
		}
		role, args := s.Command[0], s.Command[1:]
		if r := roleOf(role); r == 0 || r == roleAll || r == roleBroker {
			bad("%s: command %q is not a role to deploy (api, dispatcher, coordinator)", name, role)
			continue
		}
		roles[role]++
		for i := range args {
			args[i] = interpolate(args[i])
		}
		env, err := s.env()
		if err != nil {
			bad("%s: %v", name, err)
			continue
		}
		fs := newFlagSet(role, &config{})
		fs.SetOutput(io.Discard) // parseConfig would print the usage on a bad flag
		if err := fs.Parse(args); err != nil {
			bad("%s: geckohook %s %s: %v", name, role, strings.Join(args, " "), err)
			continue
		}
		for k, v := range env {
			env[k] = interpolate(v)
			flagName := strings.ToLower(strings.ReplaceAll(strings.TrimPrefix(k, "GECKOHOOK_"), "_", "-"))
			switch {
			case !strings.HasPrefix(k, "GECKOHOOK_") || fs.Lookup(flagName) == nil || envName(flagName) != k:
				bad("%s: environment variable %s is not a geckohook flag's GECKOHOOK_<FLAG> variable", name, k)
			case flagRoles[flagName]&roleOf(role) == 0:
				// geckohook ignores it (one file or environment may serve
				// every role), so it would do nothing here.
				bad("%s: --%s (from env) means nothing to %s, a setting of %s only", name, flagName, role, flagRoles[flagName])
			}
		}
		c, _, err := parseConfig(role, args, func(k string) string { return env[k] })
		if err != nil {
			bad("%s: geckohook %s %s: %v", name, role, strings.Join(args, " "), err)
			continue
		}
		p := &process{role: roleOf(role), cmd: role, c: c, brokers: splitList(c.KafkaBrokers), redisAddrs: splitList(c.RedisAddr)}
		if err := p.check(); err != nil {
			bad("%s: %v", name, err)
		}
		running := map[string]bool{}
		for _, pt := range p.parts() {
			if p.runs(pt) {
				running[pt.name] = true
			}
		}
		for flagName, src := range c.set {
			ps, ok := flagParts[flagName]
			if !ok || slices.ContainsFunc(ps, func(p string) bool { return running[p] }) {
				continue
			}
			bad("%s: --%s (from %s) means nothing to %s, which runs none of %q", name, flagName, src, role, ps)
		}
		services = append(services, geckohookService{name: name, role: role, c: c})

		// Health and metrics are served on the role's ops listener, which
		// must take connections from other containers.
		listen := c.MetricsListen
		if role == "api" {
			listen = c.APIListen
		}
		host, port, err := net.SplitHostPort(listen)
		if err != nil || (host != "" && host != "0.0.0.0" && host != "::") {
			bad("%s: %s serves health and metrics on %q; in a container it must listen on all interfaces (:port)", name, role, listen)
			continue
		}
		checkHealthcheck(name, port, s.Healthcheck, bad)
		if !slices.Contains(targets, net.JoinHostPort(name, port)) {
			bad("%s: Prometheus does not scrape %s (its targets: %q)", name, net.JoinHostPort(name, port), targets)
		}
		if role == "dispatcher" {
			// The dispatcher drains for --request-timeout plus 5 s (parts.go).
			grace, err := time.ParseDuration(s.StopGracePeriod)
			if need := c.RequestTimeout + 5*time.Second; err != nil || grace <= need {
				bad("%s: stop_grace_period %q must be longer than the drain (%v) or Docker kills the dispatcher mid-drain", name, s.StopGracePeriod, need)
			}
		}
	}
	for _, role := range []string{"api", "dispatcher", "coordinator"} {
		if roles[role] == 0 {
			bad("no service runs geckohook %s", role)
		}
	}
	if roles["dispatcher"] < 2 {
		bad("%d dispatcher services; the deployment shows partitions shared by two", roles["dispatcher"])
	}
	return services, problems
}

// checkHealthcheck wants the image's probe to ask /healthz and /readyz on
// the role's ops port.
func checkHealthcheck(name, port string, hc map[string]any, bad func(string, ...any)) {
	test, _ := hc["test"].([]any)
	var words []string
	for _, w := range test {
		words = append(words, fmt.Sprint(w))
	}
	if len(words) < 3 || words[0] != "CMD" || words[1] != "/usr/local/bin/probe" {
		bad("%s: healthcheck %q must run [CMD, /usr/local/bin/probe, URL...]", name, words)
		return
	}
	var paths []string
	for _, u := range words[2:] {
		rest, ok := strings.CutPrefix(u, "http://"+net.JoinHostPort("127.0.0.1", port)+"/")
		if !ok {
			bad("%s: healthcheck asks %s, not the role's ops listener 127.0.0.1:%s", name, u, port)
			continue
		}
		paths = append(paths, "/"+rest)
	}
	for _, want := range []string{"/healthz", "/readyz"} {
		if !slices.Contains(paths, want) {
			bad("%s: healthcheck does not ask %s", name, want)
		}
	}
}

// scrapeTargets lists the static targets of a Prometheus configuration.
func scrapeTargets(prometheusYAML []byte) ([]string, error) {
	var pc struct {
		ScrapeConfigs []struct {
			JobName       string `yaml:"job_name"`
			StaticConfigs []struct {
				Targets []string `yaml:"targets"`
			} `yaml:"static_configs"`
		} `yaml:"scrape_configs"`
	}
	if err := yaml.Unmarshal(prometheusYAML, &pc); err != nil {
		return nil, fmt.Errorf("cannot parse the Prometheus configuration: %w", err)
	}
	var out []string
	for _, sc := range pc.ScrapeConfigs {
		for _, st := range sc.StaticConfigs {
			out = append(out, st.Targets...)
		}
	}
	return out, nil
}

func TestComposeUsesRealFlags(t *testing.T) {
	compose, prom := readDeploy(t, "compose.yaml"), readDeploy(t, "prometheus/prometheus.yml")
	services, problems := checkCompose(compose, prom)
	for _, err := range problems {
		t.Error(err)
	}
	// The checks above ran on every geckohook service (more may be added).
	var got []string
	for _, s := range services {
		got = append(got, s.name+"="+s.role)
	}
	for _, want := range []string{"api=api", "coordinator=coordinator", "dispatcher-1=dispatcher", "dispatcher-2=dispatcher"} {
		if !slices.Contains(got, want) {
			t.Errorf("geckohook services %q, want %s among them", got, want)
		}
	}

	// A modified copy with one mistake must fail with that mistake.
	f := func(old, new, want string) {
		t.Helper()
		if !strings.Contains(string(compose), old) {
			t.Fatalf("compose.yaml no longer contains %q; update this case", old)
		}
		bad := []byte(strings.Replace(string(compose), old, new, 1))
		_, problems := checkCompose(bad, prom)
		if !slices.ContainsFunc(problems, func(err error) bool { return strings.Contains(err.Error(), want) }) {
			t.Errorf("replacing %q with %q: problems %q, want one containing %q", old, new, problems, want)
		}
	}
	f(`["dispatcher", "--metrics-listen", ":9090"]`, `["dispatcher", "--metric-listen", ":9090"]`, "flag provided but not defined: -metric-listen")
	f(`["dispatcher", "--metrics-listen", ":9090"]`, `["dispatch", "--metrics-listen", ":9090"]`, `command "dispatch" is not a role`)
	f(`["dispatcher", "--metrics-listen", ":9090"]`, `["all", "--metrics-listen", ":9090"]`, `command "all" is not a role`)
	f("GECKOHOOK_REDIS_ADDR: redis:6379", "GECKOHOOK_REDIS_ADDRESS: redis:6379", "GECKOHOOK_REDIS_ADDRESS is not a geckohook flag")
	f("GECKOHOOK_REDIS_ADDR: redis:6379", "REDIS_ADDR: redis:6379", "REDIS_ADDR is not a geckohook flag")
	f(`["api", "--api-listen", ":8080"]`, `["api", "--api-listen", ":8080", "--metrics-listen", ":9090"]`, "--metrics-listen is a flag of dispatcher, coordinator, not of api")
	f(`["api", "--api-listen", ":8080"]`, `["api", "--api-listen", ":8080", "--workers", "8"]`, "--workers is a flag of all, dispatcher, not of api")
	f("GECKOHOOK_MAIL_FROM:", "GECKOHOOK_WINDOW: 64\n      GECKOHOOK_MAIL_FROM:", "--window (from env) means nothing to coordinator")
	f(`["api", "--api-listen", ":8080"]`, `["api", "--api-listen", "127.0.0.1:8080"]`, "must listen on all interfaces")
	f(`["api", "--api-listen", ":8080"]`, `["api", "--api-listen", ":8081"]`, "not the role's ops listener 127.0.0.1:8081")
	f(`"http://127.0.0.1:9090/healthz", "http://127.0.0.1:9090/readyz"]`, `"http://127.0.0.1:9090/healthz"]`, "does not ask /readyz")
	f(`["coordinator", "--metrics-listen", ":9090",`, `["coordinator", "--mail-at", "25:00", "--metrics-listen", ":9090",`, "bad --mail-at")
	f("GECKOHOOK_REDIS_ADDR: redis:6379\n", "\n", "--redis-addr is required for")
	f("stop_grace_period: 30s", "stop_grace_period: 10s", "must be longer than the drain")
}

// TestComposeCheckerSeesPrometheusTargets is the negative case of the
// scrape targets, which live in the other file.
func TestComposeCheckerSeesPrometheusTargets(t *testing.T) {
	compose, prom := readDeploy(t, "compose.yaml"), string(readDeploy(t, "prometheus/prometheus.yml"))
	old := `"dispatcher-1:9090", "dispatcher-2:9090"`
	if !strings.Contains(prom, old) {
		t.Fatalf("prometheus.yml no longer contains %q; update this case", old)
	}
	_, problems := checkCompose(compose, []byte(strings.Replace(prom, old, `"dispatcher-1:9090"`, 1)))
	if len(problems) != 1 || !strings.Contains(problems[0].Error(), "Prometheus does not scrape dispatcher-2:9090") {
		t.Errorf("problems %q, want only that dispatcher-2 is not scraped", problems)
	}
}

// The build stage's Go is go.mod's release.
func TestDockerfileGoMatchesGoMod(t *testing.T) {
	mod, err := os.ReadFile("../../go.mod")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^go (\d+\.\d+)`).FindSubmatch(mod)
	d := regexp.MustCompile(`(?m)^ARG GO_VERSION=(\S+)$`).FindSubmatch(readDeploy(t, "Dockerfile"))
	if m == nil || d == nil || string(m[1]) != string(d[1]) {
		t.Errorf("go.mod's go %q, Dockerfile's GO_VERSION %q: keep them the same release", m, d)
	}
}

func TestPromtoolAcceptsRulesAndConfig(t *testing.T) {
	promtool := testenv.Tool(t, "promtool")
	for _, args := range [][]string{
		{"check", "rules", "prometheus/alerts.yml"},
		{"check", "config", "prometheus/prometheus.yml"},
	} {
		cmd := exec.Command(promtool, args...)
		cmd.Dir = deployDir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}
