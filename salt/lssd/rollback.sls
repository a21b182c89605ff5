{#- Point this peer's lssd:current symlink back at a tag it still holds: lssd:rollback_to if
    set, else the tag installed before the one current points to now (the previous kept
    tag; lssd:keep decides how many are kept). Nothing is downloaded: a tag that is not
    installed in lssd:destination_path fails, naming the tags that are. The operator's hooks
    (lssd:hooks:sls) run after a switch, as after a deploy.

        salt 'web*' state.apply lssd.rollback
        salt 'web*' state.apply lssd.rollback pillar='{"lssd": {"rollback_to": "Deploy1"}}'

    lssd.orch.rollback does this on every peer of lssd:targets:peer.
-#}
{%- from "lssd/map.jinja" import lssd, require, hook_sls with context %}
{{- require(["destination_path"], "lssd.rollback") }}
{%- set minion = grains["id"] %}
{%- set link = "current" if lssd.current is sameas true else lssd.current %}
{%- if not link or link is not string %}
{{-   raise("lssd.rollback on minion " ~ minion ~ ": lssd:current is " ~ lssd.current|json
            ~ "; a rollback switches the current symlink, so set lssd:current to true (or a link name)") }}
{%- endif %}
{%- set hooks = hook_sls("lssd.rollback")|load_json %}

{#- The tags are read while rendering; without the execution module that read would break
    the render with a bare "not available", so say what is missing instead. #}
{%- if "lssd.installed" not in salt %}
lssd-current:
  test.fail_without_changes:
    - name: lssd-current
    - comment: {{ ("the lssd execution module is not loaded on " ~ minion ~ "; see 'lssd __virtual__ "
                  ~ "returned False' in the README")|json }}
{%- else %}
{%-   set destination = salt["file.normpath"](lssd.destination_path) %}
{#-   The tags lssd installed into this destination, oldest first. #}
{%-   set here = [] %}
{%-   for tag, record in (salt["lssd.installed"]() or {})|dictsort %}
{%-     if record.target is defined and salt["file.normpath"](record.target) == destination ~ "/" ~ tag %}
{%-       do here.append({"tag": tag, "installed": record.get("installed") or 0}) %}
{%-     endif %}
{%-   endfor %}
{%-   set here = here|sort(attribute="installed") %}
{%-   set names = here|map(attribute="tag")|list %}
{%-   set path = destination ~ "/" ~ link %}
{%-   set now = salt["file.readlink"](path).rstrip("/").split("/")|last if salt["file.is_link"](path) else none %}
{%-   set to = none %}
{%-   set problem = none %}
{%-   if lssd.get("rollback_to") not in (none, "") %}
{%-     set to = lssd.rollback_to|string %}
{%-     if to not in names %}
{%-       set problem = to ~ " is not installed in " ~ destination ~ " (installed there: "
                        ~ (names|join(", ") or "none") ~ "); a rollback never downloads: "
                        ~ "deploy it with lssd.orch.deploy instead" %}
{%-     endif %}
{%-   else %}
{%-     set before = names[:names.index(now)] if now in names else names|reject("equalto", now)|list %}
{%-     if before %}
{%-       set to = before|last %}
{%-     else %}
{%-       set problem = "no tag older than " ~ (now or "the current one") ~ " is kept in " ~ destination
                        ~ " (installed there: " ~ (names|join(", ") or "none") ~ "); name one with "
                        ~ "lssd:rollback_to, or keep more (lssd:keep)" %}
{%-     endif %}
{%-   endif %}

{%-   if problem %}
lssd-current:
  test.fail_without_changes:
    - name: lssd-current
    - comment: {{ ("lssd.rollback on minion " ~ minion ~ ": " ~ problem)|json }}
{%-   elif to == now %}
lssd-current:
  test.succeed_without_changes:
    - name: lssd-current
    - comment: {{ (path ~ " already points to " ~ to)|json }}
{%-   else %}
{%-     if hooks %}

include:
{%-       for hook in hooks %}
  - {{ hook }}
{%-       endfor %}
{%-     endif %}

# Atomic: a new symlink beside the old one, renamed over it.
lssd-current:
  module.run:
    - lssd.switch_current:
      - tag: {{ to|json }}
      - destination_path: {{ destination|json }}
      - link: {{ link|json }}
{%-     if hooks %}
    - onchanges_in:
{%-       for hook in hooks %}
      - sls: {{ hook }}
{%-       endfor %}
{%-     endif %}
{%-   endif %}
{%- endif %}
