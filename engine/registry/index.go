package registry

import (
	"slices"
	"strings"
)

// index is the in-memory copy with its lookup tables. The Registry's lock
// guards it. Its slices of webhooks cost a pointer per webhook: after a
// full load, every account's and every application's slice is a window
// of one shared array, capped at its own length so that a change never
// writes into a neighbour's window.
type index struct {
	apps    map[string]*App
	byToken map[string]*App
	hooks   map[string]*Webhook
	// byAccount holds an account's webhooks ordered by event, then id, so
	// the webhooks of one event are contiguous. Matching reads windows of
	// these slices: a change replaces the account's slice, never edits it.
	byAccount map[string][]*Webhook
	// byApp holds each application's webhooks. It is only read under the
	// lock, so changes edit it in place.
	byApp map[string]*appHooks
}

// appHooks is an application's webhooks. A full load leaves them in the
// order it read them and the first listing sorts them into listing order
// (created_at, then id), which changes keep from then on: only listings
// need the order, and a dispatcher never lists.
type appHooks struct {
	list   []*Webhook
	sorted bool
}

func newIndex(apps, hooks int) index {
	return index{
		apps: make(map[string]*App, apps), byToken: make(map[string]*App, apps),
		hooks: make(map[string]*Webhook, hooks), byAccount: make(map[string][]*Webhook),
		byApp: make(map[string]*appHooks),
	}
}

// byEvent orders an account's webhooks.
func byEvent(a, b *Webhook) int {
	if c := strings.Compare(a.Event, b.Event); c != 0 {
		return c
	}
	return strings.Compare(a.ID, b.ID)
}

// byCreation is the listing order of an application's webhooks.
func byCreation(a, b *Webhook) int {
	if c := a.CreatedAt.Compare(b.CreatedAt); c != 0 {
		return c
	}
	return strings.Compare(a.ID, b.ID)
}

// buildIndex indexes apps and the webhooks of batches (a webhook id seen
// twice keeps its first record).
func buildIndex(apps map[string]*App, batches [][]Webhook) index {
	n := 0
	for _, b := range batches {
		n += len(b)
	}
	x := newIndex(len(apps), n)
	for _, a := range apps {
		x.addApp(a)
	}
	all := make([]*Webhook, 0, n)
	for _, b := range batches {
		for i := range b {
			w := &b[i]
			if _, dup := x.hooks[w.ID]; dup {
				continue
			}
			x.hooks[w.ID] = w
			all = append(all, w)
		}
	}
	// The two groupings share no data, so they run side by side.
	done := make(chan struct{})
	go func() {
		defer close(done)
		group(all, func(w *Webhook) string { return w.AppID }, nil, func(app string, hooks []*Webhook) {
			x.byApp[app] = &appHooks{list: hooks, sorted: len(hooks) < 2}
		})
	}()
	group(all, func(w *Webhook) string { return w.AccountID }, byEvent, func(acc string, hooks []*Webhook) {
		x.byAccount[acc] = hooks
	})
	<-done
	return x
}

// group calls put with every key of hooks and the key's webhooks, ordered
// by order when not nil: windows of one new array, each capped at its
// length. Grouping by a map and sorting each group alone costs far less
// than sorting every webhook by key and order (a million string
// comparisons a level).
func group(hooks []*Webhook, key func(*Webhook) string, order func(a, b *Webhook) int, put func(string, []*Webhook)) {
	groups := make(map[string]int32)
	of := make([]int32, len(hooks))
	var start []int32 // group g's first slot, once counted
	for i, w := range hooks {
		g, ok := groups[key(w)]
		if !ok {
			g = int32(len(start))
			groups[key(w)] = g
			start = append(start, 0)
		}
		start[g]++
		of[i] = g
	}
	at := int32(0)
	for g, n := range start {
		start[g], at = at, at+n
	}
	arr := make([]*Webhook, len(hooks))
	next := slices.Clone(start)
	for i, w := range hooks {
		arr[next[of[i]]] = w
		next[of[i]]++
	}
	for k, g := range groups {
		win := arr[start[g]:next[g]:next[g]]
		if order != nil && len(win) > 1 {
			slices.SortFunc(win, order)
		}
		put(k, win)
	}
}

func (x *index) addApp(a *App) {
	x.removeApp(a.ID)
	x.apps[a.ID] = a
	x.byToken[a.TokenHash] = a
	for _, p := range a.PreviousTokens {
		x.byToken[p.Value] = a
	}
}

func (x *index) removeApp(id string) {
	if a := x.apps[id]; a != nil {
		delete(x.byToken, a.TokenHash)
		for _, p := range a.PreviousTokens {
			delete(x.byToken, p.Value)
		}
		delete(x.apps, id)
	}
}

func (x *index) addHook(w *Webhook) {
	x.removeHook(w.ID)
	x.hooks[w.ID] = w
	list := x.byAccount[w.AccountID]
	i, _ := slices.BinarySearchFunc(list, w, byEvent)
	x.byAccount[w.AccountID] = slices.Concat(list[:i], []*Webhook{w}, list[i:])
	app := x.byApp[w.AppID]
	if app == nil {
		app = &appHooks{sorted: true}
		x.byApp[w.AppID] = app
	}
	i = len(app.list)
	if app.sorted {
		i, _ = slices.BinarySearchFunc(app.list, w, byCreation)
	}
	app.list = slices.Insert(app.list, i, w)
}

func (x *index) removeHook(id string) {
	old := x.hooks[id]
	if old == nil {
		return
	}
	delete(x.hooks, id)
	list := x.byAccount[old.AccountID]
	if i, ok := slices.BinarySearchFunc(list, old, byEvent); ok {
		if len(list) == 1 {
			delete(x.byAccount, old.AccountID)
		} else {
			x.byAccount[old.AccountID] = slices.Concat(list[:i], list[i+1:])
		}
	}
	if app := x.byApp[old.AppID]; app != nil {
		var i int
		var ok bool
		if app.sorted {
			i, ok = slices.BinarySearchFunc(app.list, old, byCreation)
		} else {
			i = slices.Index(app.list, old)
			ok = i >= 0
		}
		switch {
		case ok && len(app.list) == 1:
			delete(x.byApp, old.AppID)
		case ok:
			app.list = slices.Delete(app.list, i, i+1)
		}
	}
}

// match is the window of an account's webhooks subscribed to event.
func match(list []*Webhook, event string) []*Webhook {
	lo, hi := 0, len(list)
	for lo < hi { // the first webhook whose event is not before event
		m := int(uint(lo+hi) >> 1)
		if list[m].Event < event {
			lo = m + 1
		} else {
			hi = m
		}
	}
	end := lo
	for end < len(list) && list[end].Event == event {
		end++
	}
	if end == lo {
		return nil
	}
	return list[lo:end:end]
}
