#!/usr/bin/env bash
# Image-to-video with nothing but curl: a local picture becomes the first frame of the video.
#
#   examples/image-to-video.sh [PICTURE] [PROMPT]      (default: examples/first-frame.jpg)
#
# The server: OPENDANCE_BASE_URL (default http://127.0.0.1:8000), OPENDANCE_API_KEY if it has
# keys, OPENDANCE_MODEL (default jisudance2.0-480p). Writes <task id>.mp4 here and prints its name.
#
# The picture is sent as a data: URI. It is streamed into a JSON file and curl sends that file
# (--data-binary @file): a photo put on the command line itself, as in
# -d "{\"image\": \"data:...$(base64 photo.jpg)\"}", fails with "Argument list too long" past
# ~128 KiB, which is most photos.
set -euo pipefail

base_url=${OPENDANCE_BASE_URL:-http://127.0.0.1:8000}
model=${OPENDANCE_MODEL:-jisudance2.0-480p}
picture=${1:-$(dirname "$0")/first-frame.jpg}
prompt=${2:-the sun rises slowly over the hills}
auth=()
if [ -n "${OPENDANCE_API_KEY:-}" ]; then auth=(-H "Authorization: Bearer $OPENDANCE_API_KEY"); fi

case "$(printf '%s' "$picture" | tr '[:upper:]' '[:lower:]')" in  # only a label: the server reads the format from the bytes
    *.png) type=image/png ;; *.webp) type=image/webp ;; *.gif) type=image/gif ;; *) type=image/jpeg ;;
esac
json_string() { printf '%s' "$1" | sed 's/\\/\\\\/g; s/"/\\"/g'; }

body=$(mktemp)
trap 'rm -f "$body"' EXIT
{
    printf '{"model": "%s", "prompt": "%s", "image": "data:%s;base64,' "$(json_string "$model")" "$(json_string "$prompt")" "$type"
    base64 < "$picture" | tr -d '\n'
    printf '"}'
} > "$body"

field() { grep -o "\"$1\":\"[^\"]*\"" | head -n 1 | cut -d '"' -f 4; }  # a string field of a task object

task=$(curl -sS --fail-with-body ${auth[@]+"${auth[@]}"} -H "Content-Type: application/json" --data-binary @"$body" "$base_url/v1/video/generations")
id=$(printf '%s' "$task" | field id)
echo "created $id" >&2
while :; do
    task=$(curl -sS --fail-with-body ${auth[@]+"${auth[@]}"} "$base_url/v1/video/generations/$id")
    status=$(printf '%s' "$task" | field status)
    progress=$(printf '%s' "$task" | grep -o '"progress":[0-9]*' | cut -d : -f 2)
    echo "$status $progress%" >&2
    case $status in
        completed) break ;;
        failed) echo "$task" >&2; exit 1 ;;
    esac
    sleep 1
done
curl -sS --fail-with-body ${auth[@]+"${auth[@]}"} -o "$id.mp4" "$base_url/v1/video/generations/$id/content"
echo "$id.mp4"
