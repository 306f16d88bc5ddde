// Command spiffe-interop is a SPIFFE workload written with go-spiffe v2, the reference
// Go library, used by EnclaveID's interop tests to check the agent against a client it
// did not write. The address comes from SPIFFE_ENDPOINT_SOCKET, as for any workload.
//
//	spiffe-interop fetch                      print the default SVID's ID and bundle size
//	spiffe-interop rotation TIMEOUT           wait for the SVID to change; print old and new serials
//	spiffe-interop serve ADDR ALLOWED_ID      mTLS echo server (tcp ADDR), one client authorised
//	spiffe-interop call ADDR ALLOWED_ID MSG   mTLS client; prints the server's answer
//	spiffe-interop jwt AUDIENCE               fetch a JWT-SVID, validate it through the API and
//	                                          locally against the fetched JWT bundles
//	spiffe-interop bundles                    print each X.509 bundle: trust domain, size, SHA-256
//
// Every failure exits 1 with the reason on stderr.
package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

func main() {
	if len(os.Args) < 2 {
		fail(fmt.Errorf("usage: spiffe-interop fetch|rotation|serve|call|jwt ..."))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var err error
	switch os.Args[1] {
	case "fetch":
		err = fetch(ctx)
	case "rotation":
		err = rotation(ctx, arg(2))
	case "serve":
		err = serve(ctx, arg(2), arg(3))
	case "call":
		err = call(ctx, arg(2), arg(3), arg(4))
	case "jwt":
		err = jwt(ctx, arg(2))
	case "bundles":
		err = bundles(ctx)
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fail(err)
	}
}

func arg(i int) string {
	if len(os.Args) <= i {
		fail(fmt.Errorf("missing argument %d for %s", i, os.Args[1]))
	}
	return os.Args[i]
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "spiffe-interop:", err)
	os.Exit(1)
}

func fetch(ctx context.Context) error {
	x509Context, err := workloadapi.FetchX509Context(ctx)
	if err != nil {
		return fmt.Errorf("FetchX509Context: %w", err)
	}
	svid := x509Context.DefaultSVID()
	bundle, err := x509Context.Bundles.GetX509BundleForTrustDomain(svid.ID.TrustDomain())
	if err != nil {
		return err
	}
	fmt.Printf("id %s\nsvids %d\nchain %d\nauthorities %d\nhint %q\n", svid.ID, len(x509Context.SVIDs),
		len(svid.Certificates), len(bundle.X509Authorities()), svid.Hint)
	return nil
}

func rotation(ctx context.Context, timeout string) error {
	wait, err := time.ParseDuration(timeout)
	if err != nil {
		return err
	}
	source, err := workloadapi.NewX509Source(ctx)
	if err != nil {
		return fmt.Errorf("NewX509Source: %w", err)
	}
	defer source.Close()
	first, err := source.GetX509SVID()
	if err != nil {
		return err
	}
	old := first.Certificates[0].SerialNumber.Text(16)
	fmt.Printf("old %s\n", old)
	deadline := time.After(wait)
	for {
		select {
		case <-source.Updated():
			svid, err := source.GetX509SVID()
			if err != nil {
				return err
			}
			if serial := svid.Certificates[0].SerialNumber.Text(16); serial != old {
				fmt.Printf("new %s\n", serial)
				return nil
			}
		case <-deadline:
			return fmt.Errorf("no rotation within %s", wait)
		}
	}
}

// peerAndSource parses the peer ID to authorise and opens an X509Source.
func peerAndSource(ctx context.Context, allowed string) (spiffeid.ID, *workloadapi.X509Source, error) {
	id, err := spiffeid.FromString(allowed)
	if err != nil {
		return spiffeid.ID{}, nil, err
	}
	source, err := workloadapi.NewX509Source(ctx)
	if err != nil {
		return spiffeid.ID{}, nil, fmt.Errorf("NewX509Source: %w", err)
	}
	return id, source, nil
}

func serve(ctx context.Context, addr, allowed string) error {
	id, source, err := peerAndSource(ctx, allowed)
	if err != nil {
		return err
	}
	defer source.Close()
	listener, err := tls.Listen("tcp", addr, tlsconfig.MTLSServerConfig(source, source, tlsconfig.AuthorizeID(id)))
	if err != nil {
		return err
	}
	fmt.Printf("listening %s\n", listener.Addr())
	for {
		conn, err := listener.Accept()
		if err != nil {
			return err
		}
		go func() {
			defer conn.Close()
			line, err := bufio.NewReader(conn).ReadString('\n')
			if err != nil {
				fmt.Fprintf(os.Stderr, "refused or failed: %v\n", err)
				return
			}
			svid, _ := source.GetX509SVID()
			fmt.Fprintf(conn, "%s says %s", svid.ID, line)
		}()
	}
}

func call(ctx context.Context, addr, allowed, message string) error {
	id, source, err := peerAndSource(ctx, allowed)
	if err != nil {
		return err
	}
	defer source.Close()
	conn, err := tls.Dial("tcp", addr, tlsconfig.MTLSClientConfig(source, source, tlsconfig.AuthorizeID(id)))
	if err != nil {
		return fmt.Errorf("dial: %w", err)
	}
	defer conn.Close()
	if _, err := fmt.Fprintf(conn, "%s\n", message); err != nil {
		return err
	}
	answer, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return fmt.Errorf("reading the answer: %w", err)
	}
	fmt.Print(answer)
	return nil
}

func jwt(ctx context.Context, audience string) error {
	client, err := workloadapi.New(ctx)
	if err != nil {
		return err
	}
	defer client.Close()
	svid, err := client.FetchJWTSVID(ctx, jwtsvid.Params{Audience: audience})
	if err != nil {
		return fmt.Errorf("FetchJWTSVID: %w", err)
	}
	token := svid.Marshal()
	validated, err := client.ValidateJWTSVID(ctx, token, audience)
	if err != nil {
		return fmt.Errorf("ValidateJWTSVID: %w", err)
	}
	bundles, err := client.FetchJWTBundles(ctx)
	if err != nil {
		return fmt.Errorf("FetchJWTBundles: %w", err)
	}
	local, err := jwtsvid.ParseAndValidate(token, bundles, []string{audience})
	if err != nil {
		return fmt.Errorf("jwtsvid.ParseAndValidate: %w", err)
	}
	if _, err := client.ValidateJWTSVID(ctx, token, "another-"+audience); err == nil {
		return fmt.Errorf("ValidateJWTSVID accepted a wrong audience")
	}
	fmt.Printf("id %s\nvalidated %s\nlocal %s\naudience %s\n", svid.ID, validated.ID, local.ID, strings.Join(local.Audience, ","))
	return nil
}

func bundles(ctx context.Context) error {
	set, err := workloadapi.FetchX509Bundles(ctx)
	if err != nil {
		return fmt.Errorf("FetchX509Bundles: %w", err)
	}
	for _, bundle := range set.Bundles() {
		digest := sha256.New()
		for _, authority := range bundle.X509Authorities() {
			digest.Write(authority.Raw)
		}
		fmt.Printf("bundle %s %d %x\n", bundle.TrustDomain(), len(bundle.X509Authorities()), digest.Sum(nil))
	}
	return nil
}
