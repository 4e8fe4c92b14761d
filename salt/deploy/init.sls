{#-
  Prepare a node for the projects it serves: the app user and group, and the project
  root with releases/, shared/ and meta/.  Apply with:  salt -C 'G@roles:rainbow' state.apply deploy
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
{%- endfor %}
