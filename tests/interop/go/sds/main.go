// Command sds-interop is an Envoy SDS v3 client built from go-control-plane (the types
// Envoy's Go control planes use), for EnclaveID's interop tests: the same requests go to
// EnclaveID's agent and to the real spire-agent, and the tests compare the answers.
//
//	sds-interop fetch SOCKET ENVOY_VERSION [NAME...]    FetchSecrets once
//	sds-interop stream SOCKET ENVOY_VERSION [NAME...]   StreamSecrets: the first response,
//	                                                    an ACK, then the next push (a rotation)
//	sds-interop nack SOCKET ENVOY_VERSION [NAME...]     StreamSecrets: the first response, a NACK
//	                                                    of it, then the first response after it
//	sds-interop delta SOCKET                            DeltaSecrets: the gRPC status
//
// ENVOY_VERSION is the node's user_agent_build_version (such as 1.30; 1.17 for an Envoy
// without the SPIFFE validator). Each response is printed as one JSON line describing
// its shape (names, kinds, certificate counts and SPIFFE IDs, key type, validator trust
// domains); a gRPC error is printed as {"code": ..., "message": ...}. The socket is a
// path. Exits 1 on any other failure.
package main

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

const secretType = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"

var started = time.Now()

type certs struct {
	Count      int      `json:"count"`
	LeafSerial string   `json:"leaf_serial"`
	SpiffeIDs  []string `json:"spiffe_ids"`
	CA         []bool   `json:"ca"`
}

type resource struct {
	Name           string            `json:"name"`
	Kind           string            `json:"kind"`
	Chain          *certs            `json:"chain,omitempty"`
	KeyPEMType     string            `json:"key_pem_type,omitempty"`
	KeyMatches     bool              `json:"key_matches,omitempty"`
	TrustedCA      *certs            `json:"trusted_ca,omitempty"`
	Validator      string            `json:"validator,omitempty"`
	TrustDomains   map[string]*certs `json:"trust_domains,omitempty"`
	ValidatorError string            `json:"validator_error,omitempty"`
}

type response struct {
	ElapsedMs    int64      `json:"elapsed_ms"`
	HasVersion   bool       `json:"has_version"`
	Version      string     `json:"version"`
	NonceLen     int        `json:"nonce_len"`
	TypeURL      string     `json:"type_url"`
	AnyTypeURLs  []string   `json:"any_type_urls"`
	Resources    []resource `json:"resources"`
	ControlPlane bool       `json:"control_plane"`
}

func main() {
	if len(os.Args) < 3 {
		fail(fmt.Errorf("usage: sds-interop fetch|stream|nack|delta SOCKET [ENVOY_VERSION NAME...]"))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	conn, err := grpc.NewClient("unix://"+os.Args[2], grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		fail(err)
	}
	defer conn.Close()
	client := secretv3.NewSecretDiscoveryServiceClient(conn)
	if os.Args[1] == "delta" {
		stream, err := client.DeltaSecrets(ctx)
		if err == nil {
			err = sent(stream.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: secretType}))
		}
		if err == nil {
			_, err = stream.Recv()
		}
		printStatus(err)
		return
	}
	if len(os.Args) < 4 {
		fail(fmt.Errorf("ENVOY_VERSION is needed"))
	}
	request := &discoveryv3.DiscoveryRequest{
		Node:          node(os.Args[3]),
		ResourceNames: os.Args[4:],
		TypeUrl:       secretType,
	}
	switch os.Args[1] {
	case "fetch":
		resp, err := client.FetchSecrets(ctx, request)
		if err != nil {
			printStatus(err)
			return
		}
		emit(resp)
	case "stream", "nack":
		stream, err := client.StreamSecrets(ctx)
		if err != nil {
			fail(err)
		}
		if err := sent(stream.Send(request)); err != nil {
			fail(err)
		}
		first, err := stream.Recv()
		if err != nil {
			printStatus(err)
			return
		}
		emit(first)
		next := &discoveryv3.DiscoveryRequest{
			VersionInfo:   first.VersionInfo,
			ResourceNames: request.ResourceNames,
			TypeUrl:       secretType,
			ResponseNonce: first.Nonce,
		}
		if os.Args[1] == "nack" {
			next.VersionInfo = ""
			next.ErrorDetail = &statuspb.Status{Code: 3, Message: "rejected by the test"}
		}
		if err := sent(stream.Send(next)); err != nil {
			fail(err)
		}
		pushed, err := stream.Recv()
		if err != nil {
			printStatus(err)
			return
		}
		emit(pushed)
	default:
		fail(fmt.Errorf("unknown command %q", os.Args[1]))
	}
}

// sent maps the io.EOF a stream's Send returns once the server has ended the stream (a
// server may answer, Unimplemented for example, before reading any request) to nil, so
// that the caller's next Recv returns the status the server ended it with.
func sent(err error) error {
	if errors.Is(err, io.EOF) {
		return nil
	}
	return err
}

func node(version string) *corev3.Node {
	major, minor := 1, 30
	if parts := strings.SplitN(version, ".", 2); len(parts) == 2 {
		major, _ = strconv.Atoi(parts[0])
		minor, _ = strconv.Atoi(parts[1])
	}
	return &corev3.Node{
		Id:            "sds-interop",
		Cluster:       "tests",
		UserAgentName: "envoy",
		UserAgentVersionType: &corev3.Node_UserAgentBuildVersion{
			UserAgentBuildVersion: &corev3.BuildVersion{
				Version: &typev3.SemanticVersion{MajorNumber: uint32(major), MinorNumber: uint32(minor)},
			},
		},
	}
}

func emit(resp *discoveryv3.DiscoveryResponse) {
	out := response{
		ElapsedMs:    time.Since(started).Milliseconds(),
		HasVersion:   resp.VersionInfo != "",
		Version:      resp.VersionInfo,
		NonceLen:     len(resp.Nonce),
		TypeURL:      resp.TypeUrl,
		ControlPlane: resp.ControlPlane != nil,
		Resources:    []resource{},
		AnyTypeURLs:  []string{},
	}
	for _, any := range resp.Resources {
		out.AnyTypeURLs = append(out.AnyTypeURLs, any.TypeUrl)
		secret := &tlsv3.Secret{}
		if err := any.UnmarshalTo(secret); err != nil {
			fail(fmt.Errorf("resource is not a Secret: %w", err))
		}
		out.Resources = append(out.Resources, describe(secret))
	}
	line, err := json.Marshal(out)
	if err != nil {
		fail(err)
	}
	fmt.Println(string(line))
}

func describe(secret *tlsv3.Secret) resource {
	r := resource{Name: secret.Name}
	switch t := secret.Type.(type) {
	case *tlsv3.Secret_TlsCertificate:
		r.Kind = "tls_certificate"
		chain := t.TlsCertificate.GetCertificateChain().GetInlineBytes()
		key := t.TlsCertificate.GetPrivateKey().GetInlineBytes()
		r.Chain = parse(chain)
		if block, _ := pem.Decode(key); block != nil {
			r.KeyPEMType = block.Type
			if parsed, err := x509.ParsePKCS8PrivateKey(block.Bytes); err == nil {
				if leaf := first(chain); leaf != nil {
					pub, _ := x509.MarshalPKIXPublicKey(leaf.PublicKey)
					signer, ok := parsed.(crypto.Signer)
					if ok {
						mine, _ := x509.MarshalPKIXPublicKey(signer.Public())
						r.KeyMatches = string(pub) == string(mine)
					}
				}
			}
		}
	case *tlsv3.Secret_ValidationContext:
		r.Kind = "validation_context"
		vc := t.ValidationContext
		if vc.GetTrustedCa() != nil {
			r.TrustedCA = parse(vc.GetTrustedCa().GetInlineBytes())
		}
		if custom := vc.GetCustomValidatorConfig(); custom != nil {
			r.Validator = custom.Name
			config := &tlsv3.SPIFFECertValidatorConfig{}
			if err := custom.GetTypedConfig().UnmarshalTo(config); err != nil {
				r.ValidatorError = err.Error()
			} else {
				r.TrustDomains = map[string]*certs{}
				for _, td := range config.TrustDomains {
					r.TrustDomains[td.Name] = parse(td.GetTrustBundle().GetInlineBytes())
				}
			}
		}
	default:
		r.Kind = fmt.Sprintf("%T", t)
	}
	return r
}

func parse(data []byte) *certs {
	c := &certs{SpiffeIDs: []string{}, CA: []bool{}}
	for {
		block, rest := pem.Decode(data)
		if block == nil {
			break
		}
		data = rest
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			fail(fmt.Errorf("a certificate does not parse: %w", err))
		}
		if c.Count == 0 {
			c.LeafSerial = cert.SerialNumber.Text(16)
		}
		c.Count++
		c.CA = append(c.CA, cert.IsCA)
		for _, uri := range cert.URIs {
			c.SpiffeIDs = append(c.SpiffeIDs, uri.String())
		}
	}
	return c
}

func first(data []byte) *x509.Certificate {
	block, _ := pem.Decode(data)
	if block == nil {
		return nil
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil
	}
	return cert
}

func printStatus(err error) {
	st, _ := status.FromError(err)
	line, _ := json.Marshal(map[string]any{"code": st.Code().String(), "message": st.Message()})
	fmt.Println(string(line))
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "sds-interop:", err)
	os.Exit(1)
}
