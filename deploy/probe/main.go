// Command probe is the health check of geckohook's container image: it GETs
// each URL it is given and exits 0 only when every one answers 2xx. The
// final image has no shell, curl or wget, so a container's HEALTHCHECK (or a
// compose healthcheck) runs this instead:
//
//	probe http://127.0.0.1:9090/healthz http://127.0.0.1:9090/readyz
package main

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"
)

// timeout bounds each request; a compose healthcheck's own timeout should
// be longer than timeout times the number of URLs.
const timeout = 2 * time.Second

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: probe URL...")
		os.Exit(2)
	}
	client := newClient()
	for _, u := range os.Args[1:] {
		if err := get(client, u); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	}
}

// newClient never follows a redirect: a health endpoint that redirects is
// not answering.
func newClient() *http.Client {
	return &http.Client{
		Timeout:       timeout,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// get fails unless u answers 2xx; it reads at most 512 bytes of the body,
// to show in the failure.
func get(client *http.Client, u string) error {
	resp, err := client.Get(u)
	if err != nil {
		return fmt.Errorf("cannot probe %s: %w", u, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("%s answered %d: %s", u, resp.StatusCode, bytes.TrimSpace(body))
	}
	return nil
}
