package loadtest

// This file owns the processes a load test runs against: `geckohook broker`,
// redis-server and geckohook itself, each a child process whose CPU time and
// resident memory are read from /proc, or existing ones named by address.

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/segmentio/kafka-go"
)

// Proc is a child process of the harness with the role it plays.
type Proc struct {
	Role string
	cmd  *exec.Cmd
	log  *os.File
	done chan struct{}
	err  error // set before done closes

	bin     string   // for Again
	args    []string // for Again
	env     []string // for Again
	logPath string   // for Again
}

// StartProc runs bin with args, its output appended to logPath.
func StartProc(role, logPath, bin string, args ...string) (*Proc, error) {
	return StartProcEnv(role, logPath, bin, nil, args...)
}

// StartProcEnv is StartProc with env (KEY=value) added to the child's
// environment.
func StartProcEnv(role, logPath, bin string, env []string, args ...string) (*Proc, error) {
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("cannot open the log of %s: %w", role, err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	// A harness killed outright takes its children with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	// Settings come from the arguments alone, not from the caller's
	// GECKOHOOK_* variables.
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "GECKOHOOK_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, env...)
	if err := cmd.Start(); err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("cannot start %s (%s): %w", role, bin, err)
	}
	p := &Proc{Role: role, cmd: cmd, log: f, done: make(chan struct{}), bin: bin, args: args, env: env, logPath: logPath}
	go func() {
		p.err = cmd.Wait()
		_ = f.Close()
		close(p.done)
	}()
	return p, nil
}

// Pid is the process id.
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Exited reports whether the process has ended, and how.
func (p *Proc) Exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.err
	default:
		return false, nil
	}
}

// Stop asks the process to stop (SIGTERM) and kills it after timeout.
func (p *Proc) Stop(timeout time.Duration) {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(timeout):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// Kill ends the process with SIGKILL, as a crash would, and waits for it.
func (p *Proc) Kill() {
	_ = p.cmd.Process.Kill()
	<-p.done
}

// Again starts the same command once more, its output appended to the
// same log. The process must have ended.
func (p *Proc) Again() (*Proc, error) {
	return StartProcEnv(p.Role, p.logPath, p.bin, p.env, p.args...)
}

// Usage is a process's CPU time so far and resident memory now.
type Usage struct {
	CPU time.Duration
	RSS int64
}

// clockTicks is USER_HZ, 100 on every Linux architecture Go supports.
const clockTicks = 100

// ReadUsage reads a process's CPU time and resident set from /proc.
func ReadUsage(pid int) (Usage, error) {
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return Usage{}, fmt.Errorf("cannot read the CPU time of process %d: %w", pid, err)
	}
	// The command name may hold spaces and parentheses: fields start after
	// the last ')'. utime and stime are fields 14 and 15 of the line, 12 and
	// 13 after the name; rss (pages) is field 24.
	i := bytes.LastIndexByte(stat, ')')
	f := strings.Fields(string(stat[i+1:]))
	if i < 0 || len(f) < 22 {
		return Usage{}, fmt.Errorf("cannot parse /proc/%d/stat", pid)
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	pages, _ := strconv.ParseInt(f[21], 10, 64)
	return Usage{
		CPU: time.Duration(ut+st) * time.Second / clockTicks,
		RSS: pages * int64(os.Getpagesize()),
	}, nil
}

// ReadRunWait reads how long a process's threads have waited, runnable,
// for a CPU: the second field of each /proc/<pid>/task/<tid>/schedstat,
// summed (the waits of threads that ended are lost). On a machine whose
// cores are shared, it tells a process that was slow from one that was
// starved.
func ReadRunWait(pid int) (time.Duration, error) {
	dir := "/proc/" + strconv.Itoa(pid) + "/task"
	tasks, err := os.ReadDir(dir)
	if err != nil {
		return 0, fmt.Errorf("cannot list the threads of process %d: %w", pid, err)
	}
	var sum time.Duration
	for _, t := range tasks {
		b, err := os.ReadFile(dir + "/" + t.Name() + "/schedstat")
		if err != nil {
			continue // the thread ended
		}
		if f := strings.Fields(string(b)); len(f) >= 2 {
			ns, _ := strconv.ParseInt(f[1], 10, 64)
			sum += time.Duration(ns)
		}
	}
	return sum, nil
}

// Stack is what a scenario runs against: Kafka brokers, a Redis address and
// the geckohook API, with the child processes the harness started for them.
type Stack struct {
	Brokers    []string
	RedisAddr  string
	API        string // http://host:port
	AdminToken string

	Broker    *Proc    // nil when pointed at an existing Kafka
	Redis     *Proc    // nil when pointed at an existing Redis
	Geckohook []*Proc  // nil when pointed at an existing geckohook
	Roles     []string // the role of each geckohook process (all, api, coordinator, dispatcher)
	Metrics   []string // /metrics of each geckohook process started
	Pprof     string   // http://host:port of the first one's profiles, when asked for

	dir   string
	o     StackOptions
	redis string // redis-server's port, for RestartRedis
}

// StackOptions says which processes to start and with what.
type StackOptions struct {
	Dir        string   // logs and Redis data
	Geckohook  string   // path of the geckohook binary
	RedisBin   string   // redis-server (default "redis-server")
	Brokers    []string // existing Kafka (empty: start `geckohook broker`)
	RedisAddr  string   // existing Redis (empty: start redis-server)
	API        string   // existing geckohook API (empty: start geckohook)
	AdminToken string   // of the existing API (default: generated)
	Partitions int      // of the events topic
	Topic      string   // events topic
	Group      string   // consumer group of the dispatchers
	// Dispatchers is how many geckohook processes consume: the first runs
	// every role (`all`), the others `dispatcher`. Roles, when set, wins.
	Dispatchers int
	// Roles is the role of each geckohook process, e.g. api, coordinator,
	// dispatcher, dispatcher; the first must serve the API (all or api).
	Roles []string
	Args  []string // extra flags for every geckohook process
	Pprof bool     // serve profiles from the first geckohook process
	// AppendFsync is redis-server's appendfsync (default everysec).
	AppendFsync string
	// StartLimit is how long a geckohook process may take to become
	// healthy (default 30 s).
	StartLimit time.Duration
}

// StartStack starts the broker, redis-server and geckohook processes the
// options do not point at, and waits until each answers.
func StartStack(ctx context.Context, o StackOptions) (*Stack, error) {
	s := &Stack{Brokers: o.Brokers, RedisAddr: o.RedisAddr, API: o.API, AdminToken: o.AdminToken, dir: o.Dir, o: o}
	if err := os.MkdirAll(o.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("cannot make the stack directory: %w", err)
	}
	// redis-server would load an earlier run's AOF from the directory: its
	// webhooks (on receivers long gone) and retry queues would fail and
	// retry through this run.
	if _, err := os.Stat(filepath.Join(o.Dir, "appendonlydir")); err == nil && o.RedisAddr == "" {
		return nil, fmt.Errorf("%s holds the Redis data of an earlier run: give each run a directory of its own", o.Dir)
	}
	ok := false
	defer func() {
		if !ok {
			s.Stop()
		}
	}()
	if len(s.Brokers) == 0 {
		addr, err := freeAddr()
		if err != nil {
			return nil, err
		}
		log := filepath.Join(o.Dir, "broker.log")
		s.Broker, err = StartProc("broker", log, o.Geckohook, "broker", "--embedded-kafka-listen", addr,
			"--partitions", strconv.Itoa(o.Partitions), "--log-level", "warn")
		if err != nil {
			return nil, err
		}
		if err := waitFor(ctx, 30*time.Second, s.Broker, func() error { return logSays(log, "listening on "+addr) }); err != nil {
			return nil, fmt.Errorf("the broker did not start: %w", err)
		}
		s.Brokers = []string{addr}
	}
	if s.RedisAddr == "" {
		addr, err := freeAddr()
		if err != nil {
			return nil, err
		}
		_, s.redis, _ = net.SplitHostPort(addr)
		if err := s.startRedis(ctx); err != nil {
			return nil, err
		}
		s.RedisAddr = addr
	}
	if s.API == "" {
		if s.AdminToken == "" {
			s.AdminToken = "bench-" + strconv.FormatInt(time.Now().UnixNano(), 36)
		}
		roles := o.Roles
		if len(roles) == 0 {
			roles = []string{"all"}
			for i := 1; i < max(o.Dispatchers, 1); i++ {
				roles = append(roles, "dispatcher")
			}
		}
		for i, role := range roles {
			p, metrics, err := s.StartGeckohook(ctx, role, i == 0 && o.Pprof)
			if err != nil {
				return nil, err
			}
			s.Geckohook, s.Roles, s.Metrics = append(s.Geckohook, p), append(s.Roles, role), append(s.Metrics, metrics)
			if i == 0 {
				s.API = strings.TrimSuffix(metrics, "/metrics")
			}
		}
	}
	ok = true
	return s, nil
}

// startRedis starts redis-server on the stack's port and directory, with
// AOF, and waits until it answers.
func (s *Stack) startRedis(ctx context.Context) error {
	bin := s.o.RedisBin
	if bin == "" {
		bin = "redis-server"
	}
	// AOF with fsync every second by default: what a production retry
	// queue runs with (only failures reach Redis, so the healthy path
	// never waits on it).
	fsync := s.o.AppendFsync
	if fsync == "" {
		fsync = "everysec"
	}
	var err error
	s.Redis, err = StartProc("redis", filepath.Join(s.dir, "redis.log"), bin, "--port", s.redis, "--bind", "127.0.0.1",
		"--dir", s.dir, "--save", "", "--appendonly", "yes", "--appendfsync", fsync)
	if err != nil {
		return err
	}
	addr := net.JoinHostPort("127.0.0.1", s.redis)
	if err := waitFor(ctx, 20*time.Second, s.Redis, func() error { return redisPing(addr) }); err != nil {
		return fmt.Errorf("redis-server did not start: %w", err)
	}
	return nil
}

// RestartRedis kills the redis-server the stack started (SIGKILL, as a
// crash would) and starts it again on the same port from its AOF.
func (s *Stack) RestartRedis(ctx context.Context) error {
	if s.Redis == nil {
		return fmt.Errorf("the stack did not start redis-server")
	}
	s.Redis.Kill()
	return s.startRedis(ctx)
}

// StartGeckohook starts one geckohook process of role (all, api,
// coordinator or dispatcher) against the stack's Kafka and Redis and waits
// until it is healthy; it returns the process and its /metrics address.
// The caller owns it: the stack stops only the processes in Geckohook.
func (s *Stack) StartGeckohook(ctx context.Context, role string, pprof bool) (*Proc, string, error) {
	o := s.o
	listenFlag := "--metrics-listen"
	if role == "all" || role == "api" {
		listenFlag = "--api-listen"
	}
	addr, err := freeAddr()
	if err != nil {
		return nil, "", err
	}
	// Settings go in GECKOHOOK_* variables: each command takes those it
	// uses and ignores the rest, where a flag of another command on its
	// command line would be an error.
	env := settingsEnv(append([]string{"--kafka-brokers", strings.Join(s.Brokers, ","), "--redis-addr", s.RedisAddr,
		"--admin-token", s.AdminToken, "--allow-private-targets", "--allow-http",
		"--partitions", strconv.Itoa(o.Partitions), "--events-topic", o.Topic, "--consumer-group", o.Group,
		"--kafka-session-timeout", "6s", "--log-level", "warn", "--log-format", "json",
		"--mail-outbox", filepath.Join(o.Dir, "outbox")}, o.Args...))
	args := []string{role, listenFlag, addr}
	if pprof {
		pp, err := freeAddr()
		if err != nil {
			return nil, "", err
		}
		args = append(args, "--pprof-listen", pp)
		s.Pprof = "http://" + pp
	}
	n := len(s.Geckohook)
	p, err := StartProcEnv("geckohook", filepath.Join(o.Dir, fmt.Sprintf("geckohook-%d-%s.log", n, role)), o.Geckohook, env, args...)
	if err != nil {
		return nil, "", err
	}
	limit := o.StartLimit
	if limit == 0 {
		limit = 30 * time.Second
	}
	if err := s.WaitHealthy(ctx, p, "http://"+addr+"/metrics", limit); err != nil {
		p.Kill()
		return nil, "", fmt.Errorf("geckohook %s did not start: %w", role, err)
	}
	return p, "http://" + addr + "/metrics", nil
}

// WaitHealthy waits up to limit for the /healthz beside metrics to answer 200.
func (s *Stack) WaitHealthy(ctx context.Context, p *Proc, metrics string, limit time.Duration) error {
	health := strings.TrimSuffix(metrics, "/metrics") + "/healthz"
	return waitFor(ctx, limit, p, func() error { return healthy(health) })
}

// dispatching reports whether geckohook process i consumes events.
func (s *Stack) dispatching(i int) bool {
	return i >= len(s.Roles) || s.Roles[i] == "all" || s.Roles[i] == "dispatcher"
}

// Procs returns the child processes, broker first.
func (s *Stack) Procs() []*Proc {
	var ps []*Proc
	if s.Broker != nil {
		ps = append(ps, s.Broker)
	}
	if s.Redis != nil {
		ps = append(ps, s.Redis)
	}
	return append(ps, s.Geckohook...)
}

// Check returns an error naming any child process that has ended.
func (s *Stack) Check() error {
	for _, p := range s.Procs() {
		if done, err := p.Exited(); done {
			return fmt.Errorf("%s (pid %d) exited: %v; see its log in %s", p.Role, p.Pid(), err, s.dir)
		}
	}
	return nil
}

// Stop stops geckohook first (it drains), then Redis and the broker.
func (s *Stack) Stop() {
	for i := len(s.Geckohook) - 1; i >= 0; i-- {
		s.Geckohook[i].Stop(20 * time.Second)
	}
	if s.Redis != nil {
		s.Redis.Stop(10 * time.Second)
	}
	if s.Broker != nil {
		s.Broker.Stop(10 * time.Second)
	}
}

func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("cannot find a free port: %w", err)
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// waitFor polls ready every 50 ms until it returns nil, the process ends,
// or the time runs out.
func waitFor(ctx context.Context, limit time.Duration, p *Proc, ready func() error) error {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	for {
		err := ready()
		if err == nil {
			return nil
		}
		if done, perr := p.Exited(); done {
			return fmt.Errorf("%s exited (%v); see %s", p.Role, perr, p.log.Name())
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("not ready after %s: %w", limit, err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func logSays(path, s string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if !bytes.Contains(b, []byte(s)) {
		return fmt.Errorf("log does not say %q yet", s)
	}
	return nil
}

func redisPing(addr string) error {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if line != "+PONG\r\n" {
		return fmt.Errorf("redis answered %q", strings.TrimSpace(line))
	}
	return nil
}

func healthy(url string) error {
	code, body, err := httpGet(url)
	if err != nil {
		return err
	}
	if code != 200 {
		return fmt.Errorf("%s answered %d %s", url, code, body)
	}
	return nil
}

// sampler follows the CPU and memory of processes once a second.
type sampler struct {
	mu     sync.Mutex
	procs  []*Proc
	start  map[int]Usage
	last   map[int]Usage
	wait   map[int]time.Duration // run-queue wait at the last sample
	peak   map[int]int64
	lastAt time.Time
}

func newSampler(procs []*Proc) *sampler {
	s := &sampler{procs: procs, start: map[int]Usage{}, last: map[int]Usage{}, wait: map[int]time.Duration{}, peak: map[int]int64{}, lastAt: time.Now()}
	for _, p := range procs {
		if u, err := ReadUsage(p.Pid()); err == nil {
			s.start[p.Pid()], s.last[p.Pid()], s.peak[p.Pid()] = u, u, u.RSS
		}
		if w, err := ReadRunWait(p.Pid()); err == nil {
			s.wait[p.Pid()] = w
		}
	}
	return s
}

// add follows p too (a process started again after a kill).
func (s *sampler) add(p *Proc) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.procs = append(s.procs, p)
	if u, err := ReadUsage(p.Pid()); err == nil {
		s.start[p.Pid()], s.last[p.Pid()], s.peak[p.Pid()] = u, u, u.RSS
	}
	if w, err := ReadRunWait(p.Pid()); err == nil {
		s.wait[p.Pid()] = w
	}
}

// sample reads every process and returns, for the processes of role, the
// cores they kept busy since the last sample and their summed RSS now.
func (s *sampler) sample(role string) (cores float64, rss int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	wall := now.Sub(s.lastAt).Seconds()
	s.lastAt = now
	for _, p := range s.procs {
		u, err := ReadUsage(p.Pid())
		if err != nil {
			continue // ended; its last figures stand
		}
		prev := s.last[p.Pid()]
		s.last[p.Pid()] = u
		if w, err := ReadRunWait(p.Pid()); err == nil {
			s.wait[p.Pid()] = w
		}
		s.peak[p.Pid()] = max(s.peak[p.Pid()], u.RSS)
		if p.Role == role {
			rss += u.RSS
			if wall > 0 {
				cores += (u.CPU - prev.CPU).Seconds() / wall
			}
		}
	}
	return cores, rss
}

// cpu is the CPU time and the run-queue wait so far of the processes of
// role, as the last sample (or the start) read them; false when the
// sampler follows none of them.
func (s *sampler) cpu(role string) (cpu, wait time.Duration, found bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, p := range s.procs {
		if p.Role == role {
			cpu += s.last[p.Pid()].CPU
			wait += s.wait[p.Pid()]
			found = true
		}
	}
	return cpu, wait, found
}

// roleUsage sums CPU time since the sampler began and peak RSS per role.
func (s *sampler) roleUsage(wall time.Duration) []RoleUsage {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []RoleUsage
	idx := map[string]int{}
	for _, p := range s.procs {
		i, ok := idx[p.Role]
		if !ok {
			i = len(out)
			idx[p.Role] = i
			out = append(out, RoleUsage{Role: p.Role})
		}
		cpu := (s.last[p.Pid()].CPU - s.start[p.Pid()].CPU).Seconds()
		out[i].CPUSeconds += cpu
		out[i].PeakRSSBytes += s.peak[p.Pid()]
	}
	for i := range out {
		if wall > 0 {
			out[i].CPUCoresAvg = out[i].CPUSeconds / wall.Seconds()
		}
	}
	return out
}

// httpGet is a GET with a short limit, for health checks.
func httpGet(url string) (int, string, error) {
	code, body, err := apiDo("GET", url, "", nil)
	return code, string(body), err
}

// WaitShards waits until the consumer group is stable with every geckohook
// process started in it, and they hold every one of the partitions between
// them (each at least one when there are enough), so no rebalance falls
// inside a measurement.
func (s *Stack) WaitShards(ctx context.Context, group string, partitions int, limit time.Duration) error {
	if len(s.Metrics) == 0 {
		return nil
	}
	client := &kafka.Client{Addr: kafka.TCP(s.Brokers...), Timeout: 5 * time.Second}
	return waitFor(ctx, limit, s.Geckohook[0], func() error {
		resp, err := client.DescribeGroups(ctx, &kafka.DescribeGroupsRequest{GroupIDs: []string{group}})
		if err != nil {
			return fmt.Errorf("cannot describe group %s: %w", group, err)
		}
		if len(resp.Groups) != 1 || resp.Groups[0].Error != nil {
			return fmt.Errorf("group %s not described: %+v", group, resp.Groups)
		}
		members := 0
		for i := range s.Geckohook {
			if s.dispatching(i) {
				members++
			}
		}
		if g := resp.Groups[0]; g.GroupState != "Stable" || len(g.Members) != members {
			return fmt.Errorf("group %s is %s with %d of %d members", group, g.GroupState, len(g.Members), members)
		}
		total, holding := 0, 0
		for i, url := range s.Metrics {
			if !s.dispatching(i) {
				continue
			}
			n, err := metricValue(url, "geckohook_shards")
			if err != nil {
				return err
			}
			total += int(n)
			if n > 0 {
				holding++
			}
		}
		if total != partitions || holding < min(partitions, members) {
			return fmt.Errorf("the dispatchers hold %d of %d partitions, %d of them holding any", total, partitions, holding)
		}
		return nil
	})
}

// metricValue reads one unlabelled metric from a /metrics page.
func metricValue(url, name string) (float64, error) {
	code, body, err := httpGet(url)
	if err != nil {
		return 0, err
	}
	if code != 200 {
		return 0, fmt.Errorf("%s answered %d", url, code)
	}
	for _, line := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			return strconv.ParseFloat(strings.TrimSpace(v), 64)
		}
	}
	return 0, fmt.Errorf("%s has no %s", url, name)
}

// metricSum is the sum of one metric over several /metrics addresses.
func metricSum(urls []string, name string) (int64, error) {
	var sum float64
	for _, u := range urls {
		v, err := metricValue(u, name)
		if err != nil {
			return 0, err
		}
		sum += v
	}
	return int64(sum), nil
}

// settingsEnv turns flags (--name value, or --name alone for a switch) into
// GECKOHOOK_NAME=value variables.
func settingsEnv(flags []string) []string {
	var env []string
	for i := 0; i < len(flags); i++ {
		name, ok := strings.CutPrefix(flags[i], "--")
		if !ok {
			continue
		}
		value := "true"
		if i+1 < len(flags) && !strings.HasPrefix(flags[i+1], "--") {
			value = flags[i+1]
			i++
		}
		env = append(env, "GECKOHOOK_"+strings.ToUpper(strings.ReplaceAll(name, "-", "_"))+"="+value)
	}
	return env
}
