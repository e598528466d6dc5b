package kafkaio

// session.go gathers the fetches of a process's partition readers into one
// Fetch request per broker, as the Java client and librdkafka do. Each
// reader fetching on its own costs the process and the broker a request, a
// wake-up and a syscall pair per partition each time a record arrives; at a
// steady rate spread over many partitions that is most of a fetch's cost.

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/protocol"
	fetchapi "github.com/segmentio/kafka-go/protocol/fetch"
)

// SessionConfig configures a FetchSession. Zero values mean the defaults in
// brackets.
type SessionConfig struct {
	Brokers []string
	Topic   string
	// Isolation of every fetch (ReadCommitted).
	Isolation Isolation
	// MinBytes the broker waits for (1), at most MaxWait (100ms).
	MinBytes int
	MaxWait  time.Duration
	// Linger is how long a reader's ask waits for the other readers' asks
	// before its fetch goes without them (1ms). A reader whose last
	// records are still being worked through does not hold the others up
	// for longer than this.
	Linger time.Duration
	// ClientID names the session's connections to the brokers.
	ClientID string
	// Sent, when set, is told of each request as it goes out, with the
	// number of partitions asked in it. It runs on the session's
	// goroutine and must not block.
	Sent func(partitions int)
}

// FetchSession fetches for the PartitionReaders made with it (their
// PartitionConfig.Session). It sends one request for every reader that
// asked, per leader broker, as soon as every reader not already in a
// request has asked, or the first ask has waited Linger. A request is a
// long poll (up to MaxWait): readers that ask while one is out go in
// another, on a connection of its own, so a reader never waits behind a
// long poll it is not part of. A request that leaves out partitions led
// by another broker does not long-poll, so they go to their leader next
// at once. The session opens at most one connection per reader and
// broker, and one more, but for requests still out for readers that gave
// up (at most as many again). Its goroutines run until Close.
type FetchSession struct {
	c       SessionConfig
	asks    chan *fetchAsk
	done    chan *lane // lanes back from a request
	stop    chan struct{}
	wg      sync.WaitGroup
	readers atomic.Int32 // readers made with the session and not closed
	waiting atomic.Int32 // asks in requests whose answer has not come back
	closed  sync.Once
	ctx     context.Context // ends at Close: requests out end with it
	cancel  context.CancelFunc

	// Owned by the loop.
	lanes   []*lane // every lane opened
	free    []*lane
	leaders map[int32]int32 // partition → leader broker, as last routed
}

// requestTimeout is how long a request may take beyond its MaxWait.
const requestTimeout = 30 * time.Second

// ErrSessionClosed is what a reader's Fetch returns once its session is
// closed.
var ErrSessionClosed = errors.New("fetch session closed")

// NewFetchSession starts a session; Close stops it.
func NewFetchSession(c SessionConfig) *FetchSession {
	if c.MinBytes <= 0 {
		c.MinBytes = 1
	}
	if c.MaxWait <= 0 {
		c.MaxWait = 100 * time.Millisecond
	}
	if c.Linger <= 0 {
		c.Linger = time.Millisecond
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &FetchSession{c: c, asks: make(chan *fetchAsk), done: make(chan *lane), stop: make(chan struct{}),
		ctx: ctx, cancel: cancel, leaders: map[int32]int32{}}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.loop()
	}()
	return s
}

// Close stops the session: asks pending or still to come get
// ErrSessionClosed, requests in flight are abandoned, and the session's
// connections are closed.
func (s *FetchSession) Close() {
	s.closed.Do(func() {
		close(s.stop)
		s.cancel()
		s.wg.Wait()
		for _, l := range s.lanes {
			l.tr.CloseIdleConnections()
		}
	})
}

// fetchAsk is one reader's part of a request: its partition and offset,
// and the buffers its answer is copied into. The reader hands the ask
// over and reads it again only after the reply arrives on done (buffered,
// so the session never waits for a reader); a reader that stops waiting
// leaves the ask to the session and makes a new one.
type fetchAsk struct {
	partition int32
	offset    int64
	maxBytes  int32
	since     time.Time
	records   []byte       // the partition's record set, copied out of the answer
	aborted   []abortedTxn // its aborted transactions
	done      chan fetchReply
	// gone is set by a reader that stopped waiting: an ask not sent yet
	// is dropped, so a partition handed to a new reader is not asked for
	// twice in one request.
	gone atomic.Bool
}

// fetchReply is a request's answer for one ask.
type fetchReply struct {
	a       fetchAnswer // records and aborted point into the ask's buffers
	version int16
	err     error
}

func newFetchAsk(partition int32, maxBytes int32) *fetchAsk {
	return &fetchAsk{partition: partition, maxBytes: maxBytes, done: make(chan fetchReply, 1)}
}

// hand gives k to the session.
func (s *FetchSession) hand(ctx context.Context, k *fetchAsk) error {
	k.since = time.Now()
	select {
	case s.asks <- k:
		return nil
	case <-s.stop:
		return ErrSessionClosed
	case <-ctx.Done():
		return ctx.Err()
	}
}

// wait waits for the reply to k, handed to the session; a wait that ends
// with ctx gives the ask up.
func (s *FetchSession) wait(ctx context.Context, k *fetchAsk) (fetchReply, error) {
	select {
	case rep := <-k.done:
		return rep, nil
	case <-ctx.Done():
		k.gone.Store(true)
		return fetchReply{}, ctx.Err()
	}
}

// lane is one connection's worth of requests: a transport of its own (a
// broker answers a connection's requests in order) and the exchange that
// carries its request. Its goroutine sends each request handed to it and
// replies to the request's asks.
type lane struct {
	tr   *kafka.Transport
	x    *sessionExchange
	asks []*fetchAsk
	got  []bool // per ask: answered from the broker's answer
	work chan struct{}
}

// loop gathers asks into requests until the session stops.
func (s *FetchSession) loop() {
	var pending []*fetchAsk
	linger := time.NewTimer(time.Hour)
	linger.Stop()
	defer func() {
		for _, l := range s.lanes {
			close(l.work)
		}
		for _, k := range pending {
			k.done <- fetchReply{err: ErrSessionClosed}
		}
	}()
	for {
		pending = slices.DeleteFunc(pending, func(k *fetchAsk) bool { return k.gone.Load() })
		if len(pending) > 0 {
			waited := time.Since(pending[0].since)
			if len(pending)+int(s.waiting.Load()) >= int(s.readers.Load()) || waited >= s.c.Linger {
				pending = s.send(pending)
			} else {
				linger.Reset(s.c.Linger - waited)
			}
		}
		select {
		case <-s.stop:
			// Requests out end with the session's context; wait for their
			// lanes so that nothing is written to an ask after Close.
			for range len(s.lanes) - len(s.free) {
				<-s.done
			}
			return
		case k := <-s.asks:
			pending = append(pending, k)
		case l := <-s.done:
			maps.Copy(s.leaders, l.x.routes)
			clear(l.asks)
			l.asks = l.asks[:0]
			s.free = append(s.free, l)
		case <-linger.C:
		}
	}
}

// send hands pending's asks to free lanes, one request per leader as last
// routed, and returns the asks left (no lane was free).
func (s *FetchSession) send(pending []*fetchAsk) []*fetchAsk {
	for len(pending) > 0 {
		l := s.lane()
		if l == nil {
			break
		}
		leader := s.leaderOf(pending[0].partition)
		rest := pending[:0]
		for _, k := range pending {
			if s.leaderOf(k.partition) == leader {
				l.asks = append(l.asks, k)
			} else {
				rest = append(rest, k)
			}
		}
		clear(pending[len(rest):])
		pending = rest
		s.waiting.Add(int32(len(l.asks)))
		if s.c.Sent != nil {
			s.c.Sent(len(l.asks))
		}
		l.work <- struct{}{}
	}
	return pending
}

// leaderOf is partition's leader as last routed, -1 if not known.
func (s *FetchSession) leaderOf(partition int32) int32 {
	if l, ok := s.leaders[partition]; ok {
		return l
	}
	return -1
}

// lane returns a free lane, opening one while no more than readers are
// out for readers still waiting; nil when none can be had.
func (s *FetchSession) lane() *lane {
	if n := len(s.free); n > 0 {
		l := s.free[n-1]
		s.free = s.free[:n-1]
		return l
	}
	// One lane more than readers: a lane still out for a reader that gave
	// up (its shard was revoked) does not hold up the one that took over.
	// Lanes out only for readers that gave up do not count, so that
	// several revoked while their requests hang (until requestTimeout) do
	// not either; a lane per reader more bounds them. Without such lanes
	// the bound is the one above: a new lane dials a connection of its
	// own, which a busy partition should not wait for.
	readers := int(s.readers.Load())
	if len(s.lanes)-s.stranded() > readers || len(s.lanes) > 2*readers+1 {
		return nil
	}
	l := &lane{tr: &kafka.Transport{ClientID: s.c.ClientID}, work: make(chan struct{}, 1), x: s.newExchange()}
	s.lanes = append(s.lanes, l)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for range l.work {
			s.roundTrip(l)
			s.done <- l
		}
	}()
	return l
}

// stranded is how many lanes are out with asks only of readers that gave
// up. The loop reads the asks of lanes out, which their goroutines only
// read too.
func (s *FetchSession) stranded() int {
	n := 0
	for _, l := range s.lanes {
		if len(l.asks) > 0 && !slices.ContainsFunc(l.asks, func(k *fetchAsk) bool { return !k.gone.Load() }) {
			n++
		}
	}
	return n
}

func (s *FetchSession) newExchange() *sessionExchange {
	return &sessionExchange{routes: map[int32]int32{}, broker: -1, fetchExchange: fetchExchange{clientID: s.c.ClientID, req: fetchapi.Request{
		ReplicaID:      -1,
		MaxWaitTime:    int32(s.c.MaxWait / time.Millisecond),
		MinBytes:       int32(s.c.MinBytes),
		IsolationLevel: s.c.Isolation.wire(),
		SessionID:      -1,
		SessionEpoch:   -1,
		Topics:         []fetchapi.RequestTopic{{Topic: s.c.Topic}},
	}}}
}

// roundTrip sends l's asks as one request and replies to each.
func (s *FetchSession) roundTrip(l *lane) {
	x := l.x
	clear(x.routes)
	x.broker = -1
	t := &x.req.Topics[0]
	t.Partitions = t.Partitions[:0]
	var total int64
	for _, k := range l.asks {
		t.Partitions = append(t.Partitions, fetchapi.RequestPartition{Partition: k.partition, FetchOffset: k.offset,
			CurrentLeaderEpoch: -1, LogStartOffset: -1, PartitionMaxBytes: k.maxBytes})
		total += int64(k.maxBytes)
	}
	x.req.MaxBytes = int32(min(total, maxFetchFrame/2))
	x.req.MaxWaitTime = int32(s.c.MaxWait / time.Millisecond)
	// A connection that stops answering must not hold the lane for good.
	ctx, cancel := context.WithTimeout(s.ctx, s.c.MaxWait+requestTimeout)
	res, err := l.tr.RoundTrip(ctx, kafka.TCP(s.c.Brokers...), x)
	cancel()
	// Its asks are no longer waiting on a request: readers that ask again
	// before the lane is back must not count as in one.
	s.waiting.Add(-int32(len(l.asks)))
	if err == nil && res != protocol.Message(&x.fetchExchange) {
		err = fmt.Errorf("the transport answered with %T, not through the fetch's own exchange", res)
	}
	if err != nil {
		// The connection may still be reading into the exchange's frame:
		// leave it to the connection. The routing the exchange learnt
		// stays with it.
		l.x = s.newExchange()
		maps.Copy(l.x.routes, x.routes)
		for _, k := range l.asks {
			s.fail(k, err)
		}
		return
	}
	s.answer(l, x)
}

// answer copies each ask's partition out of x's answer into the ask's
// buffers and replies to it. A partition the exchange routed elsewhere
// gets an empty answer, and its reader asks again (the session sends it
// to its leader), or with no leader known an error; one missing from the
// answer gets an answer that says so.
func (s *FetchSession) answer(l *lane, x *sessionExchange) {
	if len(x.frame) < 8 {
		for _, k := range l.asks {
			s.fail(k, fmt.Errorf("answer of %d bytes", len(x.frame)))
		}
		return
	}
	l.got = append(l.got[:0], make([]bool, len(l.asks))...)
	fw := walkFetch(x.frame[8:], x.version)
	for fw.next() {
		p := readPartition(&fw.w, x.version, x.scratch[:0])
		x.scratch = p.aborted[:0]
		if fw.w.err != nil || string(fw.topic) != s.c.Topic {
			continue
		}
		i := slices.IndexFunc(l.asks, func(k *fetchAsk) bool { return k.partition == p.partition })
		if i < 0 || l.got[i] {
			continue
		}
		l.got[i] = true
		k := l.asks[i]
		a := fetchAnswer{errorCode: fw.code, found: true, partError: p.partError, highWatermark: p.highWatermark}
		k.aborted = append(k.aborted[:0], p.aborted...)
		a.aborted = k.aborted
		if p.records != nil {
			k.records = append(k.records[:0], p.records...)
			a.records = k.records
		}
		k.done <- fetchReply{a: a, version: x.version}
	}
	err := fw.error()
	for i, k := range l.asks {
		if l.got[i] {
			continue
		}
		leader, routed := x.routes[k.partition]
		switch {
		case routed && leader >= 0 && leader != x.broker:
			k.done <- fetchReply{a: fetchAnswer{errorCode: fw.code, found: true, highWatermark: -1}, version: x.version}
		case routed && leader < 0:
			k.done <- fetchReply{err: fmt.Errorf("cannot fetch %s/%d: no leader known", s.c.Topic, k.partition)}
		case err != nil:
			s.fail(k, err)
		default:
			k.done <- fetchReply{a: fetchAnswer{errorCode: fw.code}, version: x.version}
		}
	}
}

// fail answers k with err.
func (s *FetchSession) fail(k *fetchAsk, err error) {
	k.done <- fetchReply{err: fmt.Errorf("cannot fetch %s/%d at %d: %w", s.c.Topic, k.partition, k.offset, err)}
}

// sessionExchange is a fetch exchange for several partitions that routes
// itself to the leader of its first partition, leaving out the partitions
// led elsewhere instead of failing as a whole.
type sessionExchange struct {
	fetchExchange
	// routes is each partition's leader as Broker found it (-1: none);
	// broker is the one the request went to.
	routes  map[int32]int32
	broker  int32
	scratch []abortedTxn // aborted transactions as read, before the copy
}

// Broker is the leader of the request's first partition that has one;
// the partitions led by another broker or by none are taken out of the
// request.
func (x *sessionExchange) Broker(c protocol.Cluster) (protocol.Broker, error) {
	broker := protocol.Broker{ID: -1}
	t := &x.req.Topics[0]
	topic, ok := c.Topics[t.Topic]
	if !ok {
		return broker, fmt.Errorf("cannot fetch %s: %w", t.Topic, kafka.UnknownTopicOrPartition)
	}
	kept := t.Partitions[:0]
	for _, p := range t.Partitions {
		leader := int32(-1)
		if part, ok := topic.Partitions[p.Partition]; ok {
			if _, ok := c.Brokers[part.Leader]; ok {
				leader = part.Leader
			}
		}
		x.routes[p.Partition] = leader
		if leader >= 0 && broker.ID < 0 {
			broker = c.Brokers[leader]
		}
		if leader >= 0 && leader == broker.ID {
			kept = append(kept, p)
		}
	}
	if len(kept) < len(t.Partitions) {
		// The partitions taken out wait for this answer: do not long-poll.
		x.req.MaxWaitTime = 0
	}
	t.Partitions = kept
	x.broker = broker.ID
	if broker.ID < 0 {
		return broker, fmt.Errorf("cannot fetch %s: no partition asked for has a leader", t.Topic)
	}
	return broker, nil
}

var _ protocol.BrokerMessage = (*sessionExchange)(nil)
