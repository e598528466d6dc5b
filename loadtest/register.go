package loadtest

// This file owns talking to geckohook's management API: registering a
// plan's applications and webhooks, and finding which webhooks it deleted.

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"
)

var apiClient = &fasthttp.Client{
	MaxConnsPerHost: 64, MaxConnWaitTimeout: 10 * time.Second,
	ReadTimeout: 30 * time.Second, WriteTimeout: 30 * time.Second, MaxResponseBodySize: 256 << 20,
}

// apiDo sends one request and returns the status and body.
func apiDo(method, url, token string, body []byte) (int, []byte, error) {
	req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.Header.SetMethod(method)
	req.SetRequestURI(url)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if body != nil {
		req.Header.SetContentType("application/json")
		req.SetBody(body)
	}
	if err := apiClient.DoTimeout(req, resp, 30*time.Second); err != nil {
		return 0, nil, fmt.Errorf("%s %s: %w", method, url, err)
	}
	return resp.StatusCode(), append([]byte(nil), resp.Body()...), nil
}

// apiJSON sends in as JSON, wants status want, and decodes the answer into out.
func apiJSON(method, url, token string, in any, want int, out any) error {
	var body []byte
	if in != nil {
		var err error
		if body, err = json.Marshal(in); err != nil {
			return err
		}
	}
	code, got, err := apiDo(method, url, token, body)
	if err != nil {
		return err
	}
	if code != want {
		return fmt.Errorf("%s %s answered %d: %.300s", method, url, code, got)
	}
	if out != nil {
		if err := json.Unmarshal(got, out); err != nil {
			return fmt.Errorf("%s %s: cannot decode the answer: %w", method, url, err)
		}
	}
	return nil
}

// Register creates the plan's applications and webhooks through the API at
// base with the admin token, filling in their ids, secrets and tokens.
// Webhooks are created by parallel requests; progress, when not nil, is
// called with the count created so far.
func Register(ctx context.Context, base, adminToken string, p *Plan, parallel int, progress func(done int)) error {
	for i := range p.Apps {
		a := &p.Apps[i]
		var out struct {
			Application struct{ ID, Secret, Token string } `json:"application"`
		}
		in := map[string]any{"application": map[string]string{"name": a.Name, "developer_email": "bench@example.com"}}
		if err := apiJSON("POST", base+"/v1/applications", adminToken, in, 201, &out); err != nil {
			return fmt.Errorf("cannot create application %s: %w", a.Name, err)
		}
		a.ID, a.Secret, a.Token = out.Application.ID, out.Application.Secret, out.Application.Token
	}
	var next, done atomic.Int64
	var wg sync.WaitGroup
	errc := make(chan error, parallel)
	for w := 0; w < max(parallel, 1); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= len(p.Hooks) || ctx.Err() != nil {
					return
				}
				h := &p.Hooks[i]
				var out struct {
					Webhook struct{ ID string } `json:"webhook"`
				}
				in := map[string]any{"webhook": map[string]string{
					"account_id": AccountName(int(h.Account)), "event": p.Event, "address": h.URL}}
				if err := apiJSON("POST", base+"/v1/webhooks", p.Apps[h.App].Token, in, 201, &out); err != nil {
					errc <- fmt.Errorf("cannot create webhook %d: %w", i, err)
					return
				}
				h.ID = out.Webhook.ID
				if n := done.Add(1); progress != nil && n%1000 == 0 {
					progress(int(n))
				}
			}
		}()
	}
	wg.Wait()
	close(errc)
	if err := <-errc; err != nil {
		return err
	}
	return ctx.Err()
}

// Existing returns the ids of the plan's webhooks the API still lists.
func Existing(base string, p *Plan) (map[string]bool, error) {
	ids := map[string]bool{}
	for _, a := range p.Apps {
		var out struct {
			Webhooks []struct{ ID string } `json:"webhooks"`
		}
		if err := apiJSON("GET", base+"/v1/webhooks", a.Token, nil, 200, &out); err != nil {
			return nil, fmt.Errorf("cannot list the webhooks of %s: %w", a.Name, err)
		}
		for _, w := range out.Webhooks {
			ids[w.ID] = true
		}
	}
	return ids, nil
}
