"""Expands the hub's NGSI-LD entities with pyld and checks them against the core context's rules.

Usage: python3 ngsi_ld_expand.py ENTITIES.json FIXTURE_DIR

ENTITIES.json is a list of entities as the hub serves them with application/ld+json. Contexts
are served from FIXTURE_DIR (contexts.json maps URL -> file); any other URL fails the run, so
nothing is fetched from the network. Checks, per entity and attribute:
- the attribute expands to an absolute IRI (no term is dropped by expansion);
- it is an NGSI-LD Property or GeoProperty with ngsi-ld:hasValue;
- observedAt expands to https://uri.etsi.org/ngsi-ld/observedAt typed ngsi-ld:DateTime;
- unitCode expands to https://uri.etsi.org/ngsi-ld/unitCode with a string value.
Prints {entity id: {attribute: expanded IRI}} as JSON on success; exits 1 with the problems
otherwise.
"""

import json
import os
import sys

from pyld import jsonld

NGSI_LD = "https://uri.etsi.org/ngsi-ld/"
ABSOLUTE = ("http://", "https://", "urn:")


def make_loader(fixtures):
    with open(os.path.join(fixtures, "contexts.json")) as f:
        files = json.load(f)

    def load(url, options=None):
        if url not in files:
            raise jsonld.JsonLdError(
                "context not available offline: " + url,
                "jsonld.LoadDocumentError",
                code="loading remote context failed",
            )
        with open(os.path.join(fixtures, files[url])) as f:
            document = json.load(f)
        return {
            "contentType": "application/ld+json",
            "contextUrl": None,
            "documentUrl": url,
            "document": document,
        }

    return load


def main():
    entities_file, fixtures = sys.argv[1], sys.argv[2]
    with open(entities_file) as f:
        entities = json.load(f)
    options = {"documentLoader": make_loader(fixtures)}
    problems = []
    summary = {}
    for doc in entities:
        eid = doc.get("id", "?")
        ctx = doc.get("@context")
        if not isinstance(ctx, list) or NGSI_LD + "v1/ngsi-ld-core-context.jsonld" not in ctx:
            problems.append(f"{eid}: @context {ctx!r} does not end with the core context")
            continue
        expanded = jsonld.expand(doc, options)
        if len(expanded) != 1:
            problems.append(f"{eid}: expands to {len(expanded)} nodes")
            continue
        node = expanded[0]
        if node.get("@id") != eid:
            problems.append(f"{eid}: @id expands to {node.get('@id')!r}")
        for t in node.get("@type", []):
            if not t.startswith(ABSOLUTE):
                problems.append(f"{eid}: type expands to {t!r}")
        attrs = [k for k in doc if k not in ("id", "type", "@context")]
        iris = {}
        for name in attrs:
            # One attribute at a time, so each compact name is tied to its expanded IRI.
            [one] = jsonld.expand({"@context": ctx, "@id": eid, name: doc[name]}, options)
            keys = [k for k in one if not k.startswith("@")]
            if len(keys) != 1:
                problems.append(f"{eid}: `{name}` expands to {keys} (dropped by expansion?)")
                continue
            iri = keys[0]
            iris[name] = iri
            if not iri.startswith(ABSOLUTE):
                problems.append(f"{eid}: `{name}` expands to {iri!r}, not an absolute IRI")
            [prop] = one[iri]
            kinds = prop.get("@type", [])
            if kinds not in ([NGSI_LD + "Property"], [NGSI_LD + "GeoProperty"]):
                problems.append(f"{eid}: `{name}` has type {kinds}")
            if NGSI_LD + "hasValue" not in prop:
                problems.append(f"{eid}: `{name}` has no ngsi-ld:hasValue")
            if "observedAt" in doc[name]:
                at = prop.get(NGSI_LD + "observedAt")
                if not (
                    isinstance(at, list)
                    and len(at) == 1
                    and at[0].get("@type") == NGSI_LD + "DateTime"
                    and isinstance(at[0].get("@value"), str)
                    and at[0]["@value"].endswith("Z")
                ):
                    problems.append(f"{eid}: `{name}`.observedAt expands to {at!r}")
            if "unitCode" in doc[name]:
                code = prop.get(NGSI_LD + "unitCode")
                if not (
                    isinstance(code, list)
                    and len(code) == 1
                    and isinstance(code[0].get("@value"), str)
                ):
                    problems.append(f"{eid}: `{name}`.unitCode expands to {code!r}")
        # The whole document keeps every attribute too.
        whole = [k for k in node if not k.startswith("@")]
        if len(whole) != len(attrs):
            problems.append(f"{eid}: {len(attrs)} attributes, {len(whole)} after expansion")
        summary[eid] = iris
    if problems:
        print("\n".join(problems), file=sys.stderr)
        sys.exit(1)
    print(json.dumps(summary, sort_keys=True))


if __name__ == "__main__":
    main()
