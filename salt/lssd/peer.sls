{#- Download tag lssd:tag through the swarm and install it into lssd:destination_path/<tag>
    (ansible-lssd's deploy.yml). A peer that already holds the tag with the same content
    changes nothing and moves no bytes. Needs a seeder seeding the tag (lssd.orch.deploy
    orchestrates the whole run).

        salt 'web*' state.apply lssd.peer

    Every setting comes from this minion's own pillar (the orchestrate hands over only the
    run-wide tag and tracker address), so destination_path and the rest may be templated per
    minion. lssd:hooks:sls names the operator's SLS to run after a deploy that changed
    something here (a new tag installed, current switched, old tags removed), never otherwise.
-#}
{%- from "lssd/map.jinja" import lssd, require, hook_sls with context %}
{#- destination_path is not required here: a missing or null one fails the lssd.deployed state
    with a plain comment naming the key (and a lssd/peer/<tag>/failed event), where a render
    error would bury it in Salt's template excerpt and traceback. #}
{{- require(["tag"], "lssd.peer") }}
{%- set hooks = hook_sls("lssd.peer")|load_json %}
{%- if hooks %}

include:
{%-   for hook in hooks %}
  - {{ hook }}
{%-   endfor %}
{%- endif %}

lssd-deployed:
  lssd.deployed:
    - name: {{ lssd.tag|json }}
    - destination_path: {{ lssd.destination_path|json }}
    - timeout: {{ lssd.timeout|json }}
    - linger: {{ lssd.linger|json }}
    - no_tag_directory: {{ lssd.no_tag_directory|json }}
    - unsafe_please_delete: {{ lssd.unsafe_please_delete|json }}
    - owner: {{ lssd.destination_owner|json }}
    - group: {{ lssd.destination_group|json }}
    - mode: {{ lssd.destination_mode|json }}
    - force: {{ lssd.force|json }}
    - current: {{ lssd.current|json }}
    - keep: {{ lssd.keep|json }}
{%- if hooks %}
    # Each state of the hook SLS runs only when this one reports changes.
    - onchanges_in:
{%-   for hook in hooks %}
      - sls: {{ hook }}
{%-   endfor %}
{%- endif %}
