{#- Point this peer's lssd:current symlink back at a tag it still holds: lssd:rollback_to if
    set, else the tag installed before the one current points to now (the previous kept
    tag; lssd:keep decides how many are kept). Nothing is downloaded: a tag that is not
    installed in lssd:destination_path fails, naming the tags that are. The operator's hooks
    (lssd:hooks:sls) run after a switch, as after a deploy.

        salt 'web*' state.apply lssd.rollback
        salt 'web*' state.apply lssd.rollback pillar='{"lssd": {"rollback_to": "Deploy1"}}'

    lssd.orch.rollback does this on every peer of lssd:targets:peer. The lssd.rolled_back
    state decides which tag when it runs (test=True says so), not this template.
-#}
{%- from "lssd/map.jinja" import lssd, hook_sls with context %}
{#- A missing destination_path fails the lssd.rolled_back state, naming the key (see lssd.peer). #}
{%- set hooks = hook_sls("lssd.rollback")|load_json %}
{%- if hooks %}

include:
{%-   for hook in hooks %}
  - {{ hook }}
{%-   endfor %}
{%- endif %}

# Atomic: a new symlink beside the old one, renamed over it.
lssd-current:
  lssd.rolled_back:
    - destination_path: {{ lssd.destination_path|json }}
    - rollback_to: {{ lssd.rollback_to|json }}
    - current: {{ lssd.current|json }}
{%- if hooks %}
    # Each state of the hook SLS runs only when the symlink switched.
    - onchanges_in:
{%-   for hook in hooks %}
      - sls: {{ hook }}
{%-   endfor %}
{%- endif %}
