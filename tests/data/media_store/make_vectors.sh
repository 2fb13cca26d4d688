#!/bin/sh
# Prints row_v1.hex: one `media` row of version 1, laid out by hand from docs/media.md.
# Outgoing, len 1234, created 1700000000000, expires 1702592000000,
# mimetype "image/jpeg", message id "3EB0AA".
set -eu
{
  printf '01'                  # row version
  printf '00'                  # direction: Outgoing
  printf '%016x' 1234          # len
  printf '%016x' 1700000000000 # created_ms
  printf '%016x' 1702592000000 # expires_ms
  printf '%08x' 10; printf 'image/jpeg' | od -An -tx1 | tr -d ' \n'
  printf '%08x' 6;  printf '3EB0AA' | od -An -tx1 | tr -d ' \n'
  printf '\n'
} > row_v1.hex
