#!/usr/bin/env bash
# Seed corpora for the fuzz targets, one directory per target under $1: the seeds kept in
# fuzz/seeds/ and what is derived from the real fixtures in ../shared/fixtures (AWS-signed
# attestation documents, a real KMS CiphertextForRecipient). `cargo fuzz run TARGET DIR`
# adds what it finds to the directory it is given.
set -euo pipefail
out=${1:?usage: fuzz/corpus.sh OUT_DIR}
here=$(cd "$(dirname "$0")" && pwd)
fixtures=$here/../../shared/fixtures
mkdir -p "$out"
for target in $(sed -n 's/^name = "\(.*\)"$/\1/p' "$here/Cargo.toml" | grep -v '^enclaveid-fuzz$'); do
  mkdir -p "$out/$target"
  if [ -d "$here/seeds/$target" ]; then cp "$here/seeds/$target"/* "$out/$target"/; fi
done
if [ -d "$fixtures" ]; then
  cp "$fixtures"/nitro/*.cose "$out/attestation_document/"
  # The attestation extension's value around a real document: EnclaveAttestation, DER.
  python3 - "$fixtures/nitro/2025-01-06-nitro-attest-fixture.cose" "$out/attested_svid/fixture.der" <<'PY'
import sys
document = open(sys.argv[1], "rb").read()
def tlv(tag, content):
    n = len(content)
    head = bytes([n]) if n < 0x80 else bytes([0x80 | ((n.bit_length() + 7) // 8)]) + n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag]) + head + content
open(sys.argv[2], "wb").write(tlv(0x30, tlv(0x02, b"\x01") + tlv(0x04, document)))
PY
  cp "$fixtures"/kms/ciphertext-for-recipient.ber "$fixtures"/kms/parse-only/*.ber "$out/cms/"
  # Key material as ACM for Nitro Enclaves writes it, around the real ciphertext.
  python3 - "$fixtures" "$out/key_material/fixture.json" <<'PY'
import base64, json, sys
fixtures, path = sys.argv[1], sys.argv[2]
root = open(fixtures + "/nitro/aws-nitro-root-g1.pem").read()
blob = open(fixtures + "/kms/ciphertext-for-recipient.ber", "rb").read()
json.dump({
    "certificate": root,
    "certificateChain": root,
    "encryptedPrivateKey": base64.b64encode(blob).decode(),
    "encryptionMethod": "SYMMETRIC_DEFAULT",
}, open(path, "w"))
PY
else
  echo "fuzz/corpus.sh: no fixtures at $fixtures; only the kept seeds" >&2
fi
