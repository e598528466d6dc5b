package kafkaio

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/geckohook/geckohook/internal/testenv"
)

// fetchLog counts the Fetch requests a cluster is sent and how many
// partitions each asks for.
type fetchLog struct {
	mu    sync.Mutex
	sizes []int
}

func (l *fetchLog) requests() []int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.sizes)
}

// sessionCluster starts an embedded cluster of brokers brokers holding
// topic "events" of partitions partitions, and logs its fetches.
func sessionCluster(t *testing.T, brokers, partitions int) (*kfake.Cluster, []string, *fetchLog) {
	t.Helper()
	c, err := kfake.NewCluster(kfake.NumBrokers(brokers), kfake.SeedTopics(int32(partitions), "events"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	log := &fetchLog{}
	c.ControlKey(int16(kmsg.Fetch), func(r kmsg.Request) (kmsg.Response, error, bool) {
		n := 0
		for _, tp := range r.(*kmsg.FetchRequest).Topics {
			n += len(tp.Partitions)
		}
		log.mu.Lock()
		log.sizes = append(log.sizes, n)
		log.mu.Unlock()
		return nil, nil, false
	})
	return c, c.ListenAddrs(), log
}

// produceTo writes values to one partition of "events".
func produceTo(t *testing.T, cl *kgo.Client, partition int32, values ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, v := range values {
		if err := cl.ProduceSync(ctx, &kgo.Record{Value: []byte(v), Partition: partition}).FirstErr(); err != nil {
			t.Fatalf("produce %s to %d: %v", v, partition, err)
		}
	}
}

// sessionReaders makes a reader of each of n partitions of "events"
// through s, from the start.
func sessionReaders(t *testing.T, brokers []string, s *FetchSession, n int) []*PartitionReader {
	t.Helper()
	rs := make([]*PartitionReader, n)
	for p := range rs {
		rs[p] = NewPartitionReader(PartitionConfig{Brokers: brokers, Topic: "events", Partition: p, Session: s}, 0)
		t.Cleanup(rs[p].Close)
	}
	return rs
}

// readValues fetches through r until it has want values, and checks that
// they are want, in order.
func readValues(ctx context.Context, r *PartitionReader, want []string) error {
	var got []string
	for len(got) < len(want) {
		recs, err := r.Fetch(ctx)
		if err != nil {
			return err
		}
		for _, rec := range recs {
			if !rec.Skip {
				got = append(got, string(rec.Value))
			}
		}
	}
	if !slices.Equal(got, want) {
		return fmt.Errorf("read %q, want %q", got, want)
	}
	return nil
}

// readTogether has each reader read its want, each in a goroutine of its
// own as the dispatcher's shards do, and says what went wrong.
func readTogether(rs []*PartitionReader, want [][]string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	errs := make([]error, len(rs))
	var wg sync.WaitGroup
	for p, r := range rs {
		wg.Go(func() {
			if err := readValues(ctx, r, want[p]); err != nil {
				errs[p] = fmt.Errorf("partition %d: %w", p, err)
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// Readers of one session, each in its own goroutine as the dispatcher's
// shards are, each read their own partition's records, committed
// transactions only, while the broker is sent requests that carry them
// all.
func TestSessionReadsEveryPartitionInOneRequest(t *testing.T) {
	const parts = 4
	_, brokers, log := sessionCluster(t, 1, parts)
	plain, txn := testenv.KafkaProducer(t, brokers, "events", ""), testenv.KafkaProducer(t, brokers, "events", "t")
	want := make([][]string, parts)
	for p := range int32(parts) {
		for i := range 3 {
			want[p] = append(want[p], fmt.Sprintf("p%d-%d", p, i))
		}
		produceTo(t, plain, p, want[p]...)
	}
	begin(t, txn)
	produceTo(t, txn, 2, "aborted")
	end(t, txn, kgo.TryAbort)
	produceTo(t, plain, 2, "after")
	want[2] = append(want[2], "after")

	var requests, asked atomic.Int64
	// A linger long enough that a loaded machine starting the readers'
	// goroutines apart cannot split a request: one goes when all asked.
	s := NewFetchSession(SessionConfig{Brokers: brokers, Topic: "events", MaxWait: 50 * time.Millisecond,
		Linger: 500 * time.Millisecond, Sent: func(n int) { requests.Add(1); asked.Add(int64(n)) }})
	defer s.Close()
	rs := sessionReaders(t, brokers, s, parts)
	if err := readTogether(rs, want); err != nil {
		t.Fatal(err)
	}
	// Readers that wait for more keep asking together: every request
	// from here on carries every partition, and the session says so.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	errs := make([]error, parts)
	var wg sync.WaitGroup
	before := len(log.requests())
	requests0, asked0 := requests.Load(), asked.Load()
	for p, r := range rs {
		wg.Go(func() {
			if recs, err := r.Fetch(ctx); err != nil || len(recs) != 0 {
				errs[p] = fmt.Errorf("a fetch with nothing new: %d records, %v", len(recs), err)
			}
		})
	}
	wg.Wait()
	sizes := log.requests()[before:]
	if len(sizes) == 0 || slices.ContainsFunc(sizes, func(n int) bool { return n != parts }) {
		t.Fatalf("requests of idle readers carried %v partitions, want %d each", sizes, parts)
	}
	if n, a := requests.Load()-requests0, asked.Load()-asked0; n < 1 || a != n*parts {
		t.Fatalf("the session told of %d requests asking %d partitions, want %d each", n, a, parts)
	}
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
}

// A reader that asks while the others' request is out, long-polling with
// nothing to read, goes in a request of its own: its record arrives long
// before the others' long poll ends.
func TestSessionLateReaderIsNotHeldByALongPoll(t *testing.T) {
	_, brokers, log := sessionCluster(t, 1, 2)
	plain := testenv.KafkaProducer(t, brokers, "events", "")
	const maxWait = 8 * time.Second
	s := NewFetchSession(SessionConfig{Brokers: brokers, Topic: "events", MaxWait: maxWait})
	defer s.Close()
	rs := sessionReaders(t, brokers, s, 2)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	// Reader 1 asks alone; with reader 0 not asking, its request goes
	// after the linger and long-polls.
	polled := make(chan error, 1)
	go func() {
		recs, err := rs[1].Fetch(ctx)
		if err == nil && len(recs) != 0 {
			err = fmt.Errorf("reader 1 read %d records of an empty partition", len(recs))
		}
		polled <- err
	}()
	testenv.WaitFor(t, 5*time.Second, func() error {
		if len(log.requests()) == 0 {
			return errors.New("no fetch reached the broker")
		}
		return nil
	})
	start := time.Now()
	go func() {
		time.Sleep(50 * time.Millisecond)
		produceTo(t, plain, 0, "late")
	}()
	if err := readValues(ctx, rs[0], []string{"late"}); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > maxWait/2 {
		t.Fatalf("the late reader's record took %s: it waited for the other reader's long poll (%s)", took, maxWait)
	}
	if sizes := log.requests(); len(sizes) < 2 || sizes[0] != 1 {
		t.Fatalf("requests carried %v partitions, want the first reader's alone, then the late one's", sizes)
	}
	s.Close()
	select {
	case err := <-polled:
		if err == nil {
			t.Fatal("a fetch out when the session closed returned no error")
		}
	case <-time.After(maxWait / 2):
		t.Fatal("a fetch out when the session closed still waits for its long poll")
	}
	if _, err := rs[1].Fetch(ctx); !errors.Is(err, ErrSessionClosed) {
		t.Fatalf("a fetch after the session closed: %v, want %v", err, ErrSessionClosed)
	}
}

// With partitions led by different brokers, the session sends each
// broker its own partitions: every reader reads its records, and no
// request carries a partition its broker does not lead.
func TestSessionSplitsRequestsByLeader(t *testing.T) {
	const parts = 6
	c, brokers, _ := sessionCluster(t, 3, parts)
	for p := range int32(parts) {
		if err := c.MoveTopicPartition("events", p, p%3); err != nil {
			t.Fatal(err)
		}
	}
	var mu sync.Mutex
	misrouted := 0
	c.ControlKey(int16(kmsg.Fetch), func(r kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		node := c.CurrentNode()
		for _, tp := range r.(*kmsg.FetchRequest).Topics {
			for _, p := range tp.Partitions {
				if p.Partition%3 != node {
					mu.Lock()
					misrouted++
					mu.Unlock()
				}
			}
		}
		return nil, nil, false
	})
	plain := testenv.KafkaProducer(t, brokers, "events", "")
	want := make([][]string, parts)
	for p := range int32(parts) {
		want[p] = []string{fmt.Sprintf("p%d", p)}
		produceTo(t, plain, p, want[p]...)
	}
	s := NewFetchSession(SessionConfig{Brokers: brokers, Topic: "events", MaxWait: 50 * time.Millisecond})
	defer s.Close()
	if err := readTogether(sessionReaders(t, brokers, s, parts), want); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if misrouted != 0 {
		t.Fatalf("%d partitions were asked of a broker that does not lead them", misrouted)
	}
}

// Idle readers keep asking together: a reader woken by an empty answer
// that asks again before the session has seen the request end is not
// taken for a late one and sent alone.
func TestSessionIdleReadersStayTogether(t *testing.T) {
	const parts = 8
	_, brokers, log := sessionCluster(t, 1, parts)
	// The linger only bounds how long a reader slow to ask again (a loaded
	// machine) may hold the others; the split this test is about came
	// without waiting for it.
	s := NewFetchSession(SessionConfig{Brokers: brokers, Topic: "events", MaxWait: 20 * time.Millisecond,
		Linger: 200 * time.Millisecond})
	defer s.Close()
	rs := sessionReaders(t, brokers, s, parts)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	errs := make([]error, parts)
	var wg sync.WaitGroup
	for p, r := range rs {
		wg.Go(func() {
			for range 30 {
				if _, err := r.Fetch(ctx); err != nil {
					errs[p] = err
					return
				}
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	hist := map[int]int{}
	sizes := log.requests()
	for _, n := range sizes {
		hist[n]++
	}
	if hist[parts] < len(sizes)*9/10 {
		t.Fatalf("idle readers split up: %d requests by partitions carried: %v", len(sizes), hist)
	}
}

// A partition whose leader the session does not know yet may go in a
// request to another broker, which leaves it out; that request does not
// long-poll, so the partition's records already there come at once.
func TestSessionFirstFetchOfAnotherLeaderDoesNotWait(t *testing.T) {
	c, brokers, _ := sessionCluster(t, 2, 2)
	for p := range int32(2) {
		if err := c.MoveTopicPartition("events", p, p); err != nil {
			t.Fatal(err)
		}
	}
	produceTo(t, testenv.KafkaProducer(t, brokers, "events", ""), 1, "ready")
	const maxWait = 4 * time.Second
	s := NewFetchSession(SessionConfig{Brokers: brokers, Topic: "events", MaxWait: maxWait, Linger: 200 * time.Millisecond})
	defer s.Close()
	rs := sessionReaders(t, brokers, s, 2)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	// Partition 0's ask (empty, led by broker 0) is the first the loop
	// takes, so the request goes to broker 0 with partition 1 in it.
	k := rs[0].ask
	k.since = time.Now()
	s.asks <- k
	start := time.Now()
	if err := readValues(ctx, rs[1], []string{"ready"}); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > maxWait/2 {
		t.Fatalf("a record already there took %s: it waited out another broker's long poll", took)
	}
}

// A fetch asked ahead, as the dispatcher asks while it fans out the last
// batch, lands its answer apart from the records of the last two fetches
// that returned some: they read the same after it came.
func TestSessionAskAheadLandsApart(t *testing.T) {
	brokers, ctx := eventsTopic(t)
	plain := testenv.KafkaProducer(t, brokers, "events", "")
	s := NewFetchSession(SessionConfig{Brokers: brokers, Topic: "events", MaxWait: 5 * time.Second})
	defer s.Close()
	r := NewPartitionReader(PartitionConfig{Brokers: brokers, Topic: "events", Session: s}, 0)
	defer r.Close()
	var live [][]Record
	produce(t, plain, "v0")
	for i := 1; i <= 4; i++ {
		live = append(live, fetchAtLeast(t, ctx, r, 1))
		if err := r.Ask(ctx); err != nil {
			t.Fatal(err)
		}
		produce(t, plain, fmt.Sprintf("v%d", i))
		testenv.WaitFor(t, 10*time.Second, func() error {
			select {
			case rep := <-r.ask.done: // received, and put back for Take
				r.ask.done <- rep
				return nil
			default:
				return errors.New("the fetch asked ahead has no answer yet")
			}
		})
		for j := max(len(live)-2, 0); j < len(live); j++ {
			for _, rec := range live[j] {
				if want := fmt.Sprintf("v%d", j); string(rec.Value) != want || overlap(r.ask.records, rec.Value) {
					t.Fatalf("after the answer asked ahead came, the record at %d reads %q (want %q), or shares its buffer", rec.Offset, rec.Value, want)
				}
			}
		}
	}
}

// Readers revoked while their requests hang (a connection that stopped
// answering) leave lanes out until the request timeout; a reader that
// takes over fewer partitions than were revoked still gets a lane of its
// own at once, not after that timeout.
func TestSessionRevokedHungLanesDoNotHoldTheNextReader(t *testing.T) {
	c, brokers, log := sessionCluster(t, 1, 2)
	wake := make(chan struct{})
	defer close(wake)
	var fetches atomic.Int32
	c.ControlKey(int16(kmsg.Fetch), func(kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		if fetches.Add(1) <= 2 {
			c.SleepControl(func() { <-wake })
		}
		return nil, nil, false
	})
	s := NewFetchSession(SessionConfig{Brokers: brokers, Topic: "events", MaxWait: 50 * time.Millisecond})
	defer s.Close()
	old := sessionReaders(t, brokers, s, 2)
	// Each old reader asks alone, so each request (and its lane) hangs.
	for i, r := range old {
		ctx, cancel := context.WithCancel(context.Background())
		taken := make(chan error, 1)
		go func() { _, err := r.Take(ctx); taken <- err }()
		testenv.WaitFor(t, 5*time.Second, func() error {
			if len(log.requests()) <= i {
				return errors.New("the old reader's fetch has not reached the broker")
			}
			return nil
		})
		cancel()
		if err := <-taken; !errors.Is(err, context.Canceled) {
			t.Fatalf("a revoked reader's fetch: %v, want %v", err, context.Canceled)
		}
		r.Close()
	}
	produceTo(t, testenv.KafkaProducer(t, brokers, "events", ""), 0, "late")
	r := NewPartitionReader(PartitionConfig{Brokers: brokers, Topic: "events", Partition: 0, Session: s}, 0)
	defer r.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := readValues(ctx, r, []string{"late"}); err != nil {
		t.Fatalf("the reader that took over: %v; it waited for the revoked readers' hung lanes", err)
	}
}
