#!/usr/bin/env bash
# The main job, end to end, on the embedded default (SQLite, local output): installs what is missing, builds a
# Release binary, starts `fhirlake serve` on a fresh data directory, loads the 100-patient sample, reads a
# resource back, runs a Patient-level $export exactly as a HealthLake user would (curl), polls its status and
# lists the exported files with their counts, then stops the server (the data directory stays in var/).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
bash scripts/install-deps.sh build
bash scripts/build.sh fhirlake
sample=$(bash scripts/sample-data.sh)

port=${FHIRLAKE_PORT:-8080}
data_dir=${FHIRLAKE_DEMO_DIR:-$root/var/quickstart}
rm -rf "$data_dir"
mkdir -p "$data_dir"
echo "== starting fhirlake on 127.0.0.1:$port with data dir $data_dir"
./build/fhirlake serve --data-dir "$data_dir" --listen "127.0.0.1:$port" >"$data_dir/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
curl -fsS "http://127.0.0.1:$port/healthz" | jq .
base=$(curl -fsS "http://127.0.0.1:$port/healthz" | jq -r '.datastores[0].fhirBase')

echo "== loading the sample data ($sample)"
./build/fhirlake load --data-dir "$data_dir" "$sample"

echo "== reading a Patient back"
curl -fsS "$base/Patient/6c5d9ca9-54d7-42f5-bfae-a7c19cd217f2" | jq -c '{resourceType, id, meta, name: .name[0]}'

echo "== kicking off a Patient-level \$export (HealthLake FHIR REST API)"
curl -fsS -D "$data_dir/kickoff.headers" -X POST "$base/Patient/\$export?_type=Patient,Observation,Condition,Practitioner" \
  -H 'Content-Type: application/fhir+json' -H 'Prefer: respond-async' \
  -d '{"JobName": "quickstart-export",
       "DataAccessRoleArn": "arn:aws:iam::444455556666:role/your-healthlake-service-role",
       "OutputDataConfig": {"S3Configuration": {
         "S3Uri": "s3://quickstart-bucket/EXPORT-JOB",
         "KmsKeyId": "arn:aws:kms:us-east-1:444455556666:key/1234abcd-12ab-34cd-56ef-1234567890ab"}}}' | tee "$data_dir/kickoff.json"
echo
status_url=$(grep -i '^content-location:' "$data_dir/kickoff.headers" | cut -d' ' -f2 | tr -d '\r')
echo "status URL: $status_url"
for _ in $(seq 1 600); do
  status=$(curl -fsS "$status_url" | jq -r '.exportJobProperties.jobStatus')
  echo "jobStatus: $status"
  case "$status" in COMPLETED|COMPLETED_WITH_ERRORS|FAILED|CANCEL_COMPLETED|CANCEL_FAILED) break ;; esac
  sleep 0.5
done
curl -fsS "$status_url" | jq '{exportJobProperties: .exportJobProperties | {jobId, jobName, jobStatus, submitTime, endTime, exportedResourceCount}, transactionTime, output}'
[ "$status" = COMPLETED ] || { echo "export did not complete: $status" >&2; exit 1; }

echo "== exported files (local bucket directory $data_dir/s3/quickstart-bucket)"
find "$data_dir/s3/quickstart-bucket" -name '*.ndjson' | sort | while read -r f; do
  printf '%8d  %s\n' "$(wc -l <"$f")" "${f#"$data_dir"/s3/}"
done
echo "== done: the server is stopped; its data stays in $data_dir"
