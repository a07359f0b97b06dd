# dialogs-lab/citus:pg15: the systemd base + PostgreSQL at the build host's minor version +
# the build host's Citus files, for citus_node_install_method=preinstalled in the lab.
# python3-psycopg2 and python3-cryptography are what Ansible's postgresql and crypto modules
# need on a node (the role installs them when missing, which needs an apt mirror); etcd and
# python3-venv are the HA topology's (roles etcd and patroni), whose hosts have no apt
# mirror either in the lab.
# Built by lab/images/build.sh, whose build context holds lib/ and extension/ (copied from
# the host's /usr/lib/postgresql/15/lib and /usr/share/postgresql/15/extension).
# The labels say what the image was built from; build.sh rebuilds it when the host's
# PostgreSQL package or Citus files, or this file, differ from them.
ARG BASE=dialogs-lab/debian-systemd:bookworm
FROM ${BASE}

ARG PG_MAJOR=15
ARG PG_VERSION
RUN test -n "$PG_VERSION" \
 && apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends \
      "postgresql-${PG_MAJOR}=${PG_VERSION}" "postgresql-client-${PG_MAJOR}=${PG_VERSION}" \
      "libpq5=${PG_VERSION}" libcurl4 \
      python3-psycopg2 python3-cryptography \
      etcd-server etcd-client python3-venv \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb \
 && systemctl disable etcd.service
# (etcd runs only where the etcd role configures a member: not the package's default one.)

COPY lib/ /usr/lib/postgresql/${PG_MAJOR}/lib/
COPY extension/ /usr/share/postgresql/${PG_MAJOR}/extension/
# Declared here, after the apt layer, so that new Citus files do not re-download PostgreSQL.
ARG CITUS_FILES
ARG CITUS_VERSION
ARG RECIPE
# postgresql-<major> package version; sha256 over the copied Citus files (sorted names and
# contents, see build.sh); Citus major.minor from citus.control's default_version; sha256
# of this file.
LABEL org.dialogs-lab.postgresql="${PG_VERSION}" \
      org.dialogs-lab.citus-files="${CITUS_FILES}" \
      org.dialogs-lab.citus-version="${CITUS_VERSION}" \
      org.dialogs-lab.recipe="${RECIPE}"
