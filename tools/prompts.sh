#!/bin/sh
# Synthesize the IVR prompts of examples/ivr.lua as 8 kHz mono 16-bit
# WAV files (what luasip plays without resampling), so no audio blob is
# kept in the repository. espeak-ng (Debian: espeak-ng) speaks at
# 22050 Hz; sox (Debian: sox) resamples with its anti-aliasing filter.
# Usage: sh tools/prompts.sh OUTDIR   (make prompts: build/prompts)
set -eu

out=${1:?usage: prompts.sh OUTDIR}
for tool in espeak-ng sox; do
	command -v "$tool" >/dev/null 2>&1 || {
		echo "prompts: $tool not found: run 'sh .ci/deps'" >&2
		exit 1
	}
done
mkdir -p "$out"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

say() {   # say NAME TEXT
	espeak-ng -v en-us -s 165 -w "$tmp/$1.wav" "$2"
	sox -q "$tmp/$1.wav" -r 8000 -c 1 -b 16 -e signed-integer \
		"$tmp/$1.8k.wav"
	mv "$tmp/$1.8k.wav" "$out/$1.wav"
}

say menu "Press 1 to hear the last message. Press 2 to leave a message.
Press 0 to be transferred."
say record "Please leave your message after the tone.
Press the pound key when you are done."
say saved "Your message has been saved."
say message "Here is the last message."
say none "There are no messages."
say transfer "Please hold while we transfer your call."
say failed "Sorry, the transfer failed."
say invalid "Sorry, that is not a valid choice."
say goodbye "Goodbye."
