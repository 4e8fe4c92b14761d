{#-
  Prepare a node for the projects it serves: the app user and group, and the project
  root with releases/, shared/ and meta/.  Apply with:  salt -C 'G@roles:rainbow' state.apply deploy

  The deploy module (root) refuses a root, releases/ or meta/ that anyone but root can change, and
  any folder above the root that is not root's (a root-owned sticky folder such as /tmp is accepted):
  root, releases/ and meta/ are root:root and not group/other-writable; only shared/ is the app user's.
  Folders above the root that makedirs creates are root's; existing ones must already be.
-#}
{%- for name, project in salt['pillar.get']('deploy:projects', {}).items() %}
{%- set user = project.get('user', 'www') %}
{%- set group = project.get('group', user) %}
deploy-{{ name }}-group:
  group.present:
    - name: {{ group }}
    - system: True

deploy-{{ name }}-user:
  user.present:
    - name: {{ user }}
    - gid: {{ group }}
    - system: True
    - createhome: False
    - shell: /usr/sbin/nologin
    - require:
      - group: deploy-{{ name }}-group

{%- for sub in ['', '/releases', '/shared'] %}
deploy-{{ name }}-dir{{ sub | replace('/', '-') }}:
  file.directory:
    - name: {{ project.root }}{{ sub }}
    - user: {{ 'root' if sub != '/shared' else user }}
    - group: {{ 'root' if sub != '/shared' else group }}
    - mode: '0755'
    - makedirs: True
    - require:
      - user: deploy-{{ name }}-user
{%- endfor %}

deploy-{{ name }}-meta:
  file.directory:
    - name: {{ project.root }}/meta
    - user: root
    - group: root
    - mode: '0750'
    - makedirs: True
    - require:
      - file: deploy-{{ name }}-dir
{%- endfor %}
