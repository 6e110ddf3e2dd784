#!/usr/bin/env bash
# Installs and starts what Lishui needs on a Debian/Ubuntu machine: PostgreSQL with the
# TimescaleDB extension, and Mosquitto. Idempotent: a second run only checks and takes seconds.
# Registry hosts are never named here: apt sources are reused from the machine itself.
set -euo pipefail

log() { printf '[setup] %s\n' "$*"; }
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
APT_UPDATED=0
apt_install() {
  if [ "$APT_UPDATED" = 0 ]; then $SUDO apt-get update -qq >/dev/null; APT_UPDATED=1; fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# ---- PostgreSQL -------------------------------------------------------------------------------
if ! command -v pg_lsclusters >/dev/null 2>&1 || [ -z "$(ls /etc/postgresql 2>/dev/null)" ]; then
  log "installing PostgreSQL"
  apt_install postgresql postgresql-contrib
fi
PG_MAJOR=$(ls /etc/postgresql | sort -n | tail -1)
PG_CONF_DIR=/etc/postgresql/$PG_MAJOR/main
pg_start() {
  if ! pg_lsclusters -h | awk -v v="$PG_MAJOR" '$1==v && $2=="main" {print $4}' | grep -q online; then
    log "starting PostgreSQL $PG_MAJOR"
    $SUDO pg_ctlcluster --skip-systemctl-redirect "$PG_MAJOR" main start
  fi
}
pg_start

# ---- TimescaleDB ------------------------------------------------------------------------------
PKGLIBDIR=$(/usr/lib/postgresql/"$PG_MAJOR"/bin/pg_config --pkglibdir)
if ! ls "$PKGLIBDIR"/timescaledb*.so >/dev/null 2>&1; then
  if apt-cache show "postgresql-$PG_MAJOR-timescaledb" >/dev/null 2>&1 || { $SUDO apt-get update -qq >/dev/null; APT_UPDATED=1; apt-cache show "postgresql-$PG_MAJOR-timescaledb" >/dev/null 2>&1; }; then
    log "installing postgresql-$PG_MAJOR-timescaledb from the distribution"
    apt_install "postgresql-$PG_MAJOR-timescaledb"
  else
    log "building TimescaleDB from Debian's source package against PostgreSQL $PG_MAJOR"
    apt_install "postgresql-server-dev-$PG_MAJOR" build-essential cmake dpkg-dev libssl-dev libkrb5-dev
    # Debian's timescaledb source lives in the newer suite; reuse this machine's own Debian mirror.
    MIRROR=$(grep -rhoE '^(URIs:|deb) +[^ ]+' /etc/apt/sources.list.d/ /etc/apt/sources.list 2>/dev/null \
      | awk '{print $2}' | grep -vE 'security|updates' | grep -iE 'debian' | head -1 || true)
    [ -n "$MIRROR" ] || { echo "no Debian apt source found to fetch timescaledb's source from" >&2; exit 1; }
    WORK=$(mktemp -d)
    mkdir -p "$WORK/lists/partial" "$WORK/etc"
    printf 'deb-src [trusted=yes] %s trixie main\n' "$MIRROR" > "$WORK/etc/sources.list"
    APTOPTS=(-o Dir::Etc::sourcelist="$WORK/etc/sources.list" -o Dir::Etc::sourceparts=- -o Dir::State::Lists="$WORK/lists" -o APT::Get::List-Cleanup=0)
    apt-get "${APTOPTS[@]}" update -qq >/dev/null
    (cd "$WORK" && apt-get "${APTOPTS[@]}" source --download-only -qq timescaledb >/dev/null \
      && dpkg-source --no-check -x timescaledb_*.dsc src >/dev/null)
    # The same flags as Debian's own rules file: Apache-licensed build, no telemetry.
    (cd "$WORK/src" && cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo \
        -DPG_CONFIG=/usr/lib/postgresql/"$PG_MAJOR"/bin/pg_config -DAPACHE_ONLY=1 \
        -DSEND_TELEMETRY_DEFAULT=OFF -DUSE_TELEMETRY=OFF -DREGRESS_CHECKS=OFF -DTAP_CHECKS=OFF \
        -DWARNINGS_AS_ERRORS=OFF >"$WORK/build.log" 2>&1 \
      && make -C build -j"$(nproc)" >>"$WORK/build.log" 2>&1 && $SUDO make -C build install >>"$WORK/build.log" 2>&1) \
      || { tail -30 "$WORK/build.log" >&2; exit 1; }
    rm -rf "$WORK"
  fi
fi
if ! grep -qE "^shared_preload_libraries *= *'[^']*timescaledb" "$PG_CONF_DIR/postgresql.conf" "$PG_CONF_DIR"/conf.d/*.conf 2>/dev/null; then
  log "adding timescaledb to shared_preload_libraries and restarting PostgreSQL"
  $SUDO mkdir -p "$PG_CONF_DIR/conf.d"
  printf "shared_preload_libraries = 'timescaledb'\ntimescaledb.telemetry_level = off\n" | $SUDO tee "$PG_CONF_DIR/conf.d/lishui-timescaledb.conf" >/dev/null
  grep -q "^include_dir = 'conf.d'" "$PG_CONF_DIR/postgresql.conf" || echo "include_dir = 'conf.d'" | $SUDO tee -a "$PG_CONF_DIR/postgresql.conf" >/dev/null
  $SUDO pg_ctlcluster --skip-systemctl-redirect "$PG_MAJOR" main restart
fi
pg_start

# ---- Mosquitto --------------------------------------------------------------------------------
if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
  log "installing Mosquitto"
  apt_install mosquitto mosquitto-clients
fi
# Ingest acknowledges a message only once its batch is committed, so through a database outage the
# broker holds the backlog in ingest's persistent session. Mosquitto's default keeps only 1000
# queued messages per session and silently drops the rest: raise that bound, and keep persistence.
MQ_CONF=/etc/mosquitto/mosquitto.conf
MQ_SETTINGS="# lishui: queue QoS 1 backlogs for persistent sessions instead of dropping them
max_queued_messages 1000000
max_queued_bytes 1073741824
persistence true"
mq_running() { (exec 3<>/dev/tcp/127.0.0.1/1883) 2>/dev/null; }
mq_start() {
  log "starting Mosquitto"
  $SUDO mkdir -p /run/mosquitto && $SUDO chown mosquitto: /run/mosquitto 2>/dev/null || true
  $SUDO mosquitto -d -c "$MQ_CONF"
  for _ in $(seq 50); do mq_running && break; sleep 0.1; done
  mq_running || { echo "Mosquitto did not start; see /var/log/mosquitto/mosquitto.log" >&2; exit 1; }
}
if ! grep -q '^# lishui: queue' "$MQ_CONF" /etc/mosquitto/conf.d/*.conf 2>/dev/null; then
  log "configuring Mosquitto to queue QoS 1 backlogs for persistent sessions"
  if grep -q '^include_dir /etc/mosquitto/conf.d' "$MQ_CONF"; then
    printf '%s\n' "$MQ_SETTINGS" | $SUDO tee /etc/mosquitto/conf.d/lishui.conf >/dev/null
  else
    printf '\n%s\n' "$MQ_SETTINGS" | $SUDO tee -a "$MQ_CONF" >/dev/null
  fi
  # A config without a listener serves localhost only, which is what Lishui's defaults expect.
  if mq_running; then
    log "restarting Mosquitto for the new settings"
    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet mosquitto 2>/dev/null; then
      $SUDO systemctl restart mosquitto
    else
      $SUDO pkill -TERM -x mosquitto || true
      for _ in $(seq 50); do mq_running || break; sleep 0.1; done
    fi
  fi
fi
mq_running || mq_start
log "services ready: PostgreSQL $PG_MAJOR with TimescaleDB, Mosquitto on 1883"
