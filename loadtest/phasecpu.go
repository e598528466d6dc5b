package loadtest

import (
	"os"
	"time"
)

// PhaseCores is the CPU a phase's processes used, in cores (CPU seconds a
// second of the phase): geckohook's, the Kafka broker's, and the
// harness's own (its generator and receiver farm), with how long
// geckohook's threads waited, runnable, for a CPU a second. Their sum
// against the machine's cores says how much room the phase left.
type PhaseCores struct {
	Geckohook float64 `json:"geckohook"`
	Broker    float64 `json:"broker,omitempty"`
	Harness   float64 `json:"harness"`
	Waiting   float64 `json:"geckohook_waiting"`
}

// phaseCPU is the CPU time so far of the processes a phase shares the
// cores with (zero for one that cannot be read).
type phaseCPU struct {
	at                         time.Time
	geckohook, broker, harness time.Duration
	wait                       time.Duration
}

func readPhaseCPU(st *Stack) phaseCPU {
	c := phaseCPU{at: time.Now()}
	for _, p := range st.Geckohook {
		if u, err := ReadUsage(p.Pid()); err == nil {
			c.geckohook += u.CPU
		}
		if w, err := ReadRunWait(p.Pid()); err == nil {
			c.wait += w
		}
	}
	if st.Broker != nil {
		if u, err := ReadUsage(st.Broker.Pid()); err == nil {
			c.broker = u.CPU
		}
	}
	if u, err := ReadUsage(os.Getpid()); err == nil {
		c.harness = u.CPU
	}
	return c
}

// since returns the cores each process used from before to c, and
// geckohook's CPU microseconds per delivery over them (0 without
// deliveries).
func (c phaseCPU) since(before phaseCPU, deliveries int64) (PhaseCores, float64) {
	wall := c.at.Sub(before.at).Seconds()
	if wall <= 0 {
		return PhaseCores{}, 0
	}
	cores := func(d time.Duration) float64 { return d.Seconds() / wall }
	pc := PhaseCores{
		Geckohook: cores(c.geckohook - before.geckohook),
		Broker:    cores(c.broker - before.broker),
		Harness:   cores(c.harness - before.harness),
		Waiting:   cores(c.wait - before.wait),
	}
	return pc, MicrosPer(c.geckohook-before.geckohook, deliveries)
}
