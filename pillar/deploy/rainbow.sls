deploy:
  projects:
    rainbow:                          # project name: [a-z0-9][a-z0-9_-]*
      repo: /srv/git/rainbow.git      # git URL or path, read by the master
      root: /data/www/rainbow         # per node: releases/, shared/, current
      user: www                       # owns the release files; `cmd` steps run as this user
      group: www
      keep_releases: 5
      build: []                       # optional commands run by the master in a checkout before packaging
      shared: [storage/logs, public/uploads]
      config:                         # rendered per node into each release (real config stays out of git)
        config/app.ini: {source: config/app.ini.example, mode: '0640'}
      # What the config templates may read (they render in Jinja's sandbox and see nothing else):
      # pillar keys, 'a:b:c' for a nested one. Grains: template_grains (default: id, host, fqdn, os, ipv4, ...).
      template_pillar: [rainbow_secrets]
      files: {}                       # extra per-node files, see deploy/rainbow_job.sls
      restart:                        # after the switch, in order
        # PHP-FPM reload (a graceful restart of the workers) drops OPcache and the
        # realpath cache, so the new `current` target is compiled afresh; see docs/php-java.md.
        - {service: php8.2-fpm, action: reload}
      checks:                         # key pages, API, admin; run on each node after its switch
        - {url: 'http://127.0.0.1:8080/', status: 200, contains: rainbow}
        - {url: 'http://127.0.0.1:8080/health.php', status: 200, contains: ok}
      lb: {driver: haproxy, minion: lb-1, socket: /run/haproxy/admin.sock, backend: rainbow, drain_timeout: 30}
      envs:
        pro:
          branch: master
          target: 'G@roles:rainbow and G@env:pro'   # compound match of the env's nodes
          preprod: rainbow-pre-1      # released and checked first; not behind the LB
          stages:
            - {name: gray, target: 'G@region:east', batch: 1}
            - {name: all, batch: '30%'}
          max_failures: 0
        test:
          branch: dev
          target: 'G@roles:rainbow and G@env:test'
          stages:
            - {name: all, batch: '100%'}
