"""Drives flowgate's flow API with the published `authentik-client` package.

Usage: python authentik_flows.py <base URL ending in /api/v3> <bearer token>

Creates, retrieves, lists, partially updates and destroys a flow, checking the values read back. The
client validates every response strictly (pydantic models), so a missing key, a null where a value is
required, a wrong type or an unexpected status code fails here. Exits non-zero with a message on failure.
"""

import sys
import uuid

import authentik_client as ak


def main() -> int:
    base, token = sys.argv[1], sys.argv[2]
    cfg = ak.Configuration(host=base, access_token=token)
    slug = "py-" + uuid.uuid4().hex[:12]
    with ak.ApiClient(cfg) as client:
        flows = ak.FlowsApi(client)

        created = flows.flows_instances_create(
            ak.FlowRequest(
                name="Python login",
                slug=slug,
                title="Welcome",
                designation=ak.FlowDesignationEnum.AUTHENTICATION,
                layout=ak.FlowLayoutEnum.SIDEBAR_LEFT,
                denied_action=ak.DeniedActionEnum.MESSAGE,
            )
        )
        assert created is not None, "create returned no model (wrong success status?)"
        assert created.slug == slug and created.name == "Python login", created
        assert created.designation == ak.FlowDesignationEnum.AUTHENTICATION, created.designation
        assert created.layout == ak.FlowLayoutEnum.SIDEBAR_LEFT, created.layout
        assert created.pk != created.policybindingmodel_ptr_id, "pk and policybindingmodel_ptr_id must differ"
        assert created.export_url == f"/api/v3/flows/instances/{slug}/export/", created.export_url
        assert created.stages == [] and created.policies == [] and created.cache_count == 0, created

        got = flows.flows_instances_retrieve(slug)
        assert got is not None and got.pk == created.pk and got.title == "Welcome", got

        page = flows.flows_instances_list(
            designation=ak.FlowDesignationEnum.AUTHENTICATION, ordering="slug", page=1, page_size=20, search=slug
        )
        assert page is not None, "list returned no model"
        assert [f.slug for f in page.results] == [slug], page.results
        assert page.pagination.count == 1 and page.pagination.current == 1, page.pagination
        assert page.pagination.next == 0 and page.pagination.previous == 0, page.pagination

        patched = flows.flows_instances_partial_update(slug, ak.PatchedFlowRequest(title="Welcome back"))
        assert patched is not None, "partial update returned no model (wrong success status?)"
        assert patched.title == "Welcome back", patched.title
        assert patched.name == "Python login" and patched.layout == ak.FlowLayoutEnum.SIDEBAR_LEFT, patched
        assert flows.flows_instances_retrieve(slug).title == "Welcome back"

        try:
            flows.flows_instances_create(
                ak.FlowRequest(name="Dup", slug=slug, title="Dup", designation=ak.FlowDesignationEnum.AUTHENTICATION)
            )
            raise AssertionError("duplicate slug was accepted")
        except ak.exceptions.BadRequestException as err:
            assert err.status == 400 and "slug" in (err.body or ""), err

        flows.flows_instances_destroy(slug)
        try:
            flows.flows_instances_retrieve(slug)
            raise AssertionError("destroyed flow is still readable")
        except ak.exceptions.NotFoundException as err:
            assert err.status == 404 and "detail" in (err.body or ""), err
    print("authentik-client: create, retrieve, list, partial update, destroy ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
