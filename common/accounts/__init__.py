"""The files of users and hosts: key files, known_hosts, the daemon's passwd file."""
