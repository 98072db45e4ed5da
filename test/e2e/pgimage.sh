#!/usr/bin/env bash
# Builds the e2e test's PostgreSQL image without Docker or a registry, from
# Debian's own package files installed on this machine (apt-get install
# postgresql): the server and client programs of postgresql-15 and
# postgresql-client-15, their share/ files, the libraries they load (ldd),
# dash as /bin/sh, sleep, and the time zones; a small entrypoint that does
# what the official image's does with POSTGRES_USER, POSTGRES_PASSWORD and
# POSTGRES_DB on an empty data directory. hack/mkimage wraps the tree in an
# image, as it wraps Detour's binaries. JIT (llvmjit, which would pull in
# LLVM) is left out.
#
# Usage: test/e2e/pgimage.sh OUT.tar [TAG]   (default detour.local/detour-postgres:dev)
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:?usage: pgimage.sh OUT.tar [TAG]}
tag=${2:-detour.local/detour-postgres:dev}
PG=/usr/lib/postgresql/15
[[ -x $PG/bin/postgres && -x $PG/bin/pg_dump ]] || { echo "pgimage.sh: PostgreSQL 15 is not installed (apt-get install postgresql)" >&2; exit 1; }

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT

# In the image as on Debian 12: /bin, /lib, /lib64 and /sbin are /usr's.
mkdir -p "$root"/usr/{bin,lib,lib64,sbin,local/bin} "$root"/{etc,tmp,dev,proc,sys,var/lib/postgresql,var/run}
chmod 1777 "$root/tmp"
for d in bin lib lib64 sbin; do ln -s "usr/$d" "$root/$d"; done

# usrpath is where a host path lands in the image (under /usr when merged).
usrpath() {
	case $1 in
	/bin/* | /lib/* | /lib64/* | /sbin/*) echo "/usr$1" ;;
	*) echo "$1" ;;
	esac
}
# put copies a host file into the image, following its chain of symbolic
# links (each link kept as a link).
put() {
	local p=$1 dst
	while :; do
		dst=$root$(usrpath "$p")
		[[ -e $dst || -L $dst ]] && return 0
		mkdir -p "$(dirname "$dst")"
		if [[ -L $p ]]; then
			cp -P "$p" "$dst"
			local next
			next=$(readlink "$p")
			[[ $next == /* ]] || next=$(dirname "$p")/$next
			p=$next
		else
			cp "$p" "$dst"
			return 0
		fi
	done
}

elves=()
for f in "$PG"/bin/* "$PG"/lib/*.so /usr/bin/dash /usr/bin/sleep; do
	case $(basename "$f") in llvmjit*) continue ;; esac
	put "$f"
	elves+=("$f")
done
ln -s dash "$root/usr/bin/sh"
mkdir -p "$root/usr/share/postgresql"
cp -a /usr/share/postgresql/15 "$root/usr/share/postgresql/"
cp -a /usr/share/zoneinfo "$root/usr/share/"
# The libraries, and the loader, of every program and module.
ldd "${elves[@]}" 2>/dev/null | awk '/=>/ { if ($3 ~ /^\//) print $3; next } $1 ~ /^\// && $1 !~ /:$/ { print $1 }' |
	sort -u | while read -r lib; do put "$lib"; done

cat >"$root/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/bin/sh
postgres:x:999:999:PostgreSQL:/var/lib/postgresql:/bin/sh
PASSWD
cat >"$root/etc/group" <<'GROUP'
root:x:0:
postgres:x:999:
GROUP
printf 'passwd: files\ngroup: files\n' >"$root/etc/nsswitch.conf"

cat >"$root/usr/local/bin/postgres-entrypoint" <<'ENTRY'
#!/bin/sh
# As the official image: on an empty data directory, make the cluster with
# POSTGRES_USER (default postgres) and POSTGRES_PASSWORD, password logins
# from the network, and the database POSTGRES_DB; then run the server.
set -eu
: "${PGDATA:=/var/lib/postgresql/data/pgdata}"
user=${POSTGRES_USER:-postgres}
if [ ! -s "$PGDATA/PG_VERSION" ]; then
	: "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}"
	printf '%s\n' "$POSTGRES_PASSWORD" >/tmp/.pwfile
	initdb --pgdata="$PGDATA" --username="$user" --pwfile=/tmp/.pwfile --auth-host=scram-sha-256 --auth-local=trust \
		--encoding=UTF8 --no-locale --no-instructions
	: >/tmp/.pwfile
	printf 'host all all 0.0.0.0/0 scram-sha-256\nhost all all ::/0 scram-sha-256\n' >>"$PGDATA/pg_hba.conf"
	db=${POSTGRES_DB:-$user}
	if [ "$db" != postgres ]; then
		echo "CREATE DATABASE \"$db\" OWNER \"$user\"" | postgres --single -D "$PGDATA" -c unix_socket_directories=/tmp postgres >/dev/null
	fi
fi
exec postgres -D "$PGDATA" -c listen_addresses='*' -c unix_socket_directories=/tmp "$@"
ENTRY
chmod 755 "$root/usr/local/bin/postgres-entrypoint"

go run ./hack/mkimage -tag "$tag" -o "$out" -root "$root" -user 999:999 \
	-entrypoint /usr/local/bin/postgres-entrypoint \
	-env PATH=$PG/bin:/usr/local/bin:/usr/bin:/bin -env PGDATA=/var/lib/postgresql/data/pgdata
