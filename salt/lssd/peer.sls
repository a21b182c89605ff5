{#- Download tag lssd:tag through the swarm and install it into lssd:destination_path/<tag>
    (ansible-lssd's deploy.yml). A peer that already holds the tag with the same content
    changes nothing and moves no bytes. Needs a seeder seeding the tag (lssd.orch.deploy
    orchestrates the whole run).

        salt 'web*' state.apply lssd.peer
-#}
{%- from "lssd/map.jinja" import lssd with context %}

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
