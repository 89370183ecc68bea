-- ducto: pricing. Versioned pricing configs (credit_pricing_config, append-only; the
-- newest version is the active one), one cost function (credit_private.cost, which every
-- client's pricing mirrors), and the charges it prices. The config format, matching and
-- rounding rules: docs/pricing.md.
--
-- Errors:
--   DC007 invalid usage metrics   DC060 invalid pricing config
--   DC061 no price for the model  DC062 no such fixed-cost job
--   DC063 no pricing published    DC064 no such pricing version

create function credit_private.config_error(p_path text, p_problem text)
returns void
language plpgsql
volatile
set search_path = ''
as $$
begin
    perform credit_private.fail(
        'DC060', format('invalid pricing config: %s %s', p_path, p_problem),
        jsonb_build_object('path', p_path, 'problem', p_problem),
        'docs/pricing.md describes every field'
    );
end;
$$;
revoke all on function credit_private.config_error(text, text)
from public, anon, authenticated, service_role;

create function credit_private.check_config_number(
    p_value jsonb, p_path text, p_max numeric, p_places integer, p_positive boolean
)
returns numeric
language plpgsql
immutable
set search_path = ''
as $$
declare
    v_number numeric;
begin
    -- JSON numbers only (jsonb has no NaN or Infinity); at most 15 significant digits
    -- (max and places are chosen so), so a client reading it as a double is still exact
    if p_value is null or jsonb_typeof(p_value) <> 'number' then
        perform credit_private.config_error(p_path, 'must be a number');
    end if;
    v_number := trim_scale(p_value::numeric);
    if v_number < 0 or (p_positive and v_number = 0) then
        perform credit_private.config_error(
            p_path,
            case when p_positive then 'must be greater than 0' else 'must not be negative' end
        );
    end if;
    if v_number > p_max then
        perform credit_private.config_error(p_path, format('must be at most %s', p_max));
    end if;
    if scale(v_number) > p_places then
        perform credit_private.config_error(
            p_path,
            case when p_places = 0 then 'must be a whole number'
            else format('must have at most %s decimal places', p_places) end
        );
    end if;
    return v_number;
end;
$$;
revoke all on function credit_private.check_config_number(jsonb, text, numeric, integer, boolean)
from public, anon, authenticated, service_role;

create function credit_private.check_rates(p_rates jsonb, p_path text, p_with_model boolean)
returns jsonb
language plpgsql
immutable
set search_path = ''
as $$
declare
    v_field text;
    v_input numeric;
    v_output numeric;
    v_rates jsonb;
begin
    if jsonb_typeof(p_rates) is distinct from 'object' then
        perform credit_private.config_error(p_path, 'must be an object of rates');
    end if;
    for v_field in select jsonb_object_keys(p_rates) loop
        if not (
            v_field = any(array[
                'input', 'output', 'cached_input', 'cache_creation', 'cache_creation_1h',
                'reasoning', 'tool_call', 'request'
            ]) or (p_with_model and v_field = 'model')
        ) then
            perform credit_private.config_error(p_path || '.' || v_field, 'is not a known field');
        end if;
    end loop;
    foreach v_field in array array['input', 'output'] loop
        if not p_rates ? v_field then
            perform credit_private.config_error(p_path || '.' || v_field, 'is required');
        end if;
    end loop;
    -- rates per 1M tokens; per call and per request for tool_call and request
    v_input := credit_private.check_config_number(
        p_rates -> 'input', p_path || '.input', 1000000000, 6, false
    );
    v_output := credit_private.check_config_number(
        p_rates -> 'output', p_path || '.output', 1000000000, 6, false
    );
    v_rates := jsonb_build_object('input', v_input, 'output', v_output);
    -- cached and cache-write tokens default to the input rate, 1-hour cache writes to the
    -- cache-write rate, reasoning to the output rate: an omitted discount never undercharges
    foreach v_field in array array['cached_input', 'cache_creation', 'cache_creation_1h',
        'reasoning', 'tool_call', 'request'] loop
        v_rates := v_rates || jsonb_build_object(v_field, case
            when p_rates ? v_field then credit_private.check_config_number(
                p_rates -> v_field, p_path || '.' || v_field, 1000000000, 6, false
            )
            when v_field in ('cached_input', 'cache_creation') then v_input
            when v_field = 'cache_creation_1h' then (v_rates ->> 'cache_creation')::numeric
            when v_field = 'reasoning' then v_output
            else 0
        end);
    end loop;
    return v_rates;
end;
$$;
revoke all on function credit_private.check_rates(jsonb, text, boolean)
from public, anon, authenticated, service_role;

create function credit_private.check_pricing_config(p_config jsonb)
returns jsonb
language plpgsql
immutable
set search_path = ''
as $$
declare
    v_field text;
    v_unit text;
    v_entry jsonb;
    v_index integer;
    v_name text;
    v_names text[] := array[]::text[];
    v_models jsonb := '[]'::jsonb;
    v_jobs jsonb := '{}'::jsonb;
    v_default jsonb;
    v_config jsonb;
begin
    if jsonb_typeof(p_config) is distinct from 'object' then
        perform credit_private.config_error('config', 'must be a JSON object');
    end if;
    for v_field in select jsonb_object_keys(p_config) loop
        if v_field <> all(array[
            'unit', 'credits_per_usd', 'markup', 'rounding', 'min_balance', 'models', 'default',
            'fixed_jobs'
        ]) then
            perform credit_private.config_error(v_field, 'is not a known field');
        end if;
    end loop;

    v_unit := coalesce(p_config ->> 'unit', 'credits');
    if v_unit not in ('credits', 'usd') or jsonb_typeof(p_config -> 'unit') = 'null' then
        perform credit_private.config_error('unit', 'must be "credits" or "usd"');
    end if;
    if v_unit = 'usd' then
        if not p_config ? 'credits_per_usd' then
            perform credit_private.config_error('credits_per_usd', 'is required when unit is usd');
        end if;
        v_config := jsonb_build_object(
            'unit', 'usd',
            'credits_per_usd', credit_private.check_config_number(
                p_config -> 'credits_per_usd', 'credits_per_usd', 1000000000, 6, true
            ),
            'markup', case when p_config ? 'markup' then credit_private.check_config_number(
                p_config -> 'markup', 'markup', 100, 6, false
            ) else 0 end
        );
    else
        foreach v_field in array array['credits_per_usd', 'markup'] loop
            -- null is how a normalised credits config spells "not used"
            if coalesce(jsonb_typeof(p_config -> v_field), 'null') <> 'null' then
                perform credit_private.config_error(v_field, 'is only allowed when unit is usd');
            end if;
        end loop;
        v_config := jsonb_build_object('unit', 'credits', 'credits_per_usd', null, 'markup', null);
    end if;

    if coalesce(p_config ->> 'rounding', 'ceil') not in ('ceil', 'half_up', 'floor')
        or jsonb_typeof(p_config -> 'rounding') = 'null' then
        perform credit_private.config_error('rounding', 'must be "ceil", "half_up" or "floor"');
    end if;
    v_config := v_config || jsonb_build_object(
        'rounding', coalesce(p_config ->> 'rounding', 'ceil'),
        'min_balance', case when p_config ? 'min_balance' then credit_private.check_config_number(
            p_config -> 'min_balance', 'min_balance', 9007199254740991, 0, false
        ) else 0 end
    );

    if p_config ? 'models' and jsonb_typeof(p_config -> 'models') <> 'array' then
        perform credit_private.config_error('models', 'must be a list');
    end if;
    for v_entry, v_index in
        select e.entry, e.ord - 1
        from jsonb_array_elements(coalesce(p_config -> 'models', '[]'))
            with ordinality as e (entry, ord)
    loop
        if jsonb_typeof(v_entry) <> 'object' then
            perform credit_private.config_error(format('models[%s]', v_index), 'must be an object');
        end if;
        if jsonb_typeof(v_entry -> 'model') is distinct from 'string' then
            perform credit_private.config_error(
                format('models[%s].model', v_index), 'is required: a model name or pattern'
            );
        end if;
        v_name := v_entry ->> 'model';
        -- names and patterns: ASCII model-id characters, '*' matching any run of them
        if v_name !~ '^[A-Za-z0-9._:/@+*-]{1,200}$' or v_name !~ '[^*]' or v_name ~ '\*\*' then
            perform credit_private.config_error(
                format('models[%s].model', v_index),
                format('%s is not a valid model name or pattern (1 to 200 of A-Z a-z 0-9 . _'
                    || ' : / @ + -, with single * wildcards, not only *)', to_jsonb(v_name))
            );
        end if;
        if lower(v_name) = any(v_names) then
            perform credit_private.config_error(
                format('models[%s].model', v_index),
                format('%s is listed twice (names compare without case)', to_jsonb(v_name))
            );
        end if;
        v_names := v_names || lower(v_name);
        v_models := v_models || jsonb_build_array(
            jsonb_build_object('model', v_name)
            || credit_private.check_rates(v_entry, format('models[%s]', v_index), true)
        );
    end loop;

    -- explicit either way: rates for models no entry matches, or null to refuse them
    if not p_config ? 'default' then
        perform credit_private.config_error(
            'default', 'is required: rates for unknown models, or null to refuse them'
        );
    end if;
    if jsonb_typeof(p_config -> 'default') <> 'null' then
        v_default := credit_private.check_rates(p_config -> 'default', 'default', false);
    end if;

    if p_config ? 'fixed_jobs' and jsonb_typeof(p_config -> 'fixed_jobs') <> 'object' then
        perform credit_private.config_error('fixed_jobs', 'must be an object of job name: credits');
    end if;
    for v_name in select jsonb_object_keys(coalesce(p_config -> 'fixed_jobs', '{}')) loop
        if v_name !~ '^[A-Za-z0-9._:-]{1,64}$' then
            perform credit_private.config_error(
                'fixed_jobs', format('%s is not a valid job name (1 to 64 of A-Z a-z 0-9 . _ : -)',
                    to_jsonb(v_name))
            );
        end if;
        v_jobs := v_jobs || jsonb_build_object(v_name, credit_private.check_config_number(
            p_config -> 'fixed_jobs' -> v_name, 'fixed_jobs.' || v_name, 9007199254740991, 0, true
        ));
    end loop;

    if v_models = '[]' and v_default is null and v_jobs = '{}' then
        perform credit_private.config_error(
            'config', 'prices nothing: give models, a default or fixed_jobs'
        );
    end if;
    return v_config || jsonb_build_object(
        'models', v_models, 'default', v_default, 'fixed_jobs', v_jobs
    );
end;
$$;
revoke all on function credit_private.check_pricing_config(jsonb)
from public, anon, authenticated, service_role;

create function credit_private.check_usage(p_metrics jsonb)
returns jsonb
language plpgsql
immutable
set search_path = ''
as $$
declare
    -- the token kinds are disjoint counts (docs/pricing.md)
    v_counts constant text[] := array[
        'input_tokens', 'output_tokens', 'cached_input_tokens', 'cache_creation_tokens',
        'cache_creation_1h_tokens', 'reasoning_tokens', 'tool_calls', 'requests'
    ];
    v_unknown jsonb;
    v_field text;
    v_count jsonb;
    v_whole numeric;
    v_usage jsonb;
    v_counted jsonb;
begin
    -- Every charge priced by usage runs this: plain expressions, no query, until an error.
    -- Usage already in its normal form (known fields, a model name, counts that are whole
    -- numbers from 1 written without a decimal point, requests not 1) is returned as it is,
    -- in a few expressions; any other goes through the checks below, field by field, which
    -- normalise it or name what is wrong.
    if jsonb_typeof(p_metrics) = 'object' then
        v_counted := p_metrics - 'model';
        if v_counted - v_counts = '{}'::jsonb
            and jsonb_typeof(p_metrics -> 'model') = 'string'
            -- the model check below, without its {1,200}: a bounded repeat costs a regex
            -- engine much more than a length does
            and p_metrics ->> 'model' ~ '^[A-Za-z0-9._:/@+-]+$'
            and length(p_metrics ->> 'model') <= 200
            and not jsonb_path_exists(v_counted, 'strict $.* ? (!(@.type() == "number"
                && @ >= 1 && @ <= 9007199254740991 && @ == @.floor()))')
            and strpos(v_counted::text, '.') = 0
            and (v_counted -> 'requests') is distinct from '1'::jsonb then
            return p_metrics;
        end if;
    end if;
    if jsonb_typeof(p_metrics) is distinct from 'object' then
        perform credit_private.fail(
            'DC007', 'usage metrics must be a JSON object',
            jsonb_build_object('argument', 'metrics')
        );
    end if;
    v_unknown := p_metrics - 'model' - v_counts;
    if v_unknown <> '{}'::jsonb then
        v_field := (select k from jsonb_object_keys(v_unknown) as k limit 1);
        perform credit_private.fail(
            'DC007', format('usage metrics: %s is not a known field', to_jsonb(v_field)),
            jsonb_build_object('argument', 'metrics', 'field', v_field)
        );
    end if;
    if jsonb_typeof(p_metrics -> 'model') is distinct from 'string'
        or p_metrics ->> 'model' !~ '^[A-Za-z0-9._:/@+-]{1,200}$' then
        perform credit_private.fail(
            'DC007',
            format('usage metrics: model must be a model name (1 to 200 of A-Z a-z 0-9 . _ : / @'
                || ' + -), got %s', coalesce(left((p_metrics -> 'model')::text, 100), 'null')),
            jsonb_build_object('argument', 'metrics', 'field', 'model')
        );
    end if;
    v_usage := jsonb_build_object('model', p_metrics -> 'model');
    foreach v_field in array v_counts loop
        v_count := p_metrics -> v_field;
        -- absent: its default (0; 1 request), which the usage leaves out
        continue when v_count is null;
        -- two steps: SQL does not promise to short-circuit OR, and only a number casts
        if jsonb_typeof(v_count) = 'number' then
            v_whole := v_count::numeric;
        else
            v_whole := -1;
        end if;
        if v_whole <> trunc(v_whole) or v_whole not between 0 and 9007199254740991 then
            perform credit_private.fail(
                'DC007',
                format('usage metrics: %s must be a whole number from 0 to 2^53 - 1, got %s',
                    v_field, v_count),
                jsonb_build_object('argument', 'metrics', 'field', v_field)
            );
        end if;
        if v_whole <> (case when v_field = 'requests' then 1 else 0 end) then
            v_usage := v_usage || jsonb_build_object(v_field, v_whole::bigint);
        end if;
    end loop;
    return v_usage;
end;
$$;
revoke all on function credit_private.check_usage(jsonb)
from public, anon, authenticated, service_role;
grant execute on function credit_private.check_usage(jsonb) to service_role;

create function credit_private.check_job_name(p_job_name text)
returns text
language plpgsql
immutable
set search_path = ''
as $$
begin
    if p_job_name is null or p_job_name !~ '^[A-Za-z0-9._:-]{1,64}$' then
        perform credit_private.fail(
            'DC006',
            format('job_name must be 1 to 64 of A-Z a-z 0-9 . _ : -, got %s',
                coalesce(to_jsonb(left(p_job_name, 100)), 'null')),
            jsonb_build_object('argument', 'job_name')
        );
    end if;
    return p_job_name;
end;
$$;
revoke all on function credit_private.check_job_name(text)
from public, anon, authenticated, service_role;

create function credit_private.cost(p_config jsonb, p_usage jsonb)
returns public.credit_cost_result
language plpgsql
immutable
set search_path = ''
as $$
declare
    v_name jsonb := p_usage -> 'model';
    v_model text := lower(p_usage ->> 'model');
    v_rates jsonb;
    v_matched text;
    v_exact numeric;
    v_credits numeric;
begin
    -- The one definition of a cost (docs/pricing.md; ducto.pricing mirrors it).
    -- p_config comes from check_pricing_config and p_usage from check_usage, which leaves
    -- out counts at their default (0; 1 request).
    -- The entry: the exact name, else the matching pattern with the most literal
    -- characters, else the first of those in the list; else the default.
    -- First the name as written (no query; model names have no *, and names compare
    -- without case, so at most one entry is the exact name), then without case and the
    -- patterns.
    v_rates := jsonb_path_query_first(
        p_config -> 'models', '$[*] ? (@.model == $m)', jsonb_build_object('m', v_name)
    );
    v_matched := v_rates ->> 'model';
    if v_rates is null then
        select e.entry, e.entry ->> 'model' into v_rates, v_matched
        from jsonb_array_elements(p_config -> 'models') with ordinality as e (entry, ord)
        where case
            when strpos(e.entry ->> 'model', '*') = 0 then lower(e.entry ->> 'model') = v_model
            -- model names have no % or \; _ is escaped, * becomes %
            else v_model like replace(replace(lower(e.entry ->> 'model'), '_', '\_'), '*', '%')
        end
        order by
            strpos(e.entry ->> 'model', '*') = 0 desc,
            length(replace(e.entry ->> 'model', '*', '')) desc,
            e.ord
        limit 1;
    end if;
    if v_rates is null then
        v_rates := p_config -> 'default';
        if jsonb_typeof(v_rates) is distinct from 'object' then
            perform credit_private.fail(
                'DC061',
                format('no price for model %s: no models entry matches and the pricing has'
                    || ' no default', to_jsonb(p_usage ->> 'model')),
                jsonb_build_object('model', p_usage ->> 'model')
            );
        end if;
    end if;

    -- numeric multiplication and addition are exact: no rounding until the last step
    v_exact := (
        coalesce((p_usage ->> 'input_tokens')::numeric, 0) * (v_rates ->> 'input')::numeric
        + coalesce((p_usage ->> 'output_tokens')::numeric, 0) * (v_rates ->> 'output')::numeric
        + coalesce((p_usage ->> 'cached_input_tokens')::numeric, 0)
        * (v_rates ->> 'cached_input')::numeric
        + coalesce((p_usage ->> 'cache_creation_tokens')::numeric, 0)
        * (v_rates ->> 'cache_creation')::numeric
        + coalesce((p_usage ->> 'cache_creation_1h_tokens')::numeric, 0)
        * (v_rates ->> 'cache_creation_1h')::numeric
        + coalesce((p_usage ->> 'reasoning_tokens')::numeric, 0)
        * (v_rates ->> 'reasoning')::numeric
    ) * 0.000001
    + coalesce((p_usage ->> 'tool_calls')::numeric, 0) * (v_rates ->> 'tool_call')::numeric
    + coalesce((p_usage ->> 'requests')::numeric, 1) * (v_rates ->> 'request')::numeric;
    if p_config ->> 'unit' = 'usd' then
        v_exact := v_exact * (p_config ->> 'credits_per_usd')::numeric
            * (1 + (p_config ->> 'markup')::numeric);
    end if;
    v_credits := case p_config ->> 'rounding'
        when 'ceil' then ceil(v_exact)
        when 'half_up' then round(v_exact)
        else floor(v_exact)
    end;
    if v_credits > 9007199254740991 then
        perform credit_private.fail(
            'DC001', format('the usage costs %s credits, more than one operation can charge',
                v_credits),
            jsonb_build_object('credits', v_credits, 'max', 9007199254740991)
        );
    end if;
    return row(
        null::bigint, p_usage ->> 'model', v_matched, trim_scale(v_exact), v_credits::bigint,
        (p_config ->> 'min_balance')::bigint
    );
end;
$$;
revoke all on function credit_private.cost(jsonb, jsonb)
from public, anon, authenticated, service_role;
grant execute on function credit_private.cost(jsonb, jsonb) to service_role;

create function credit_private.pricing(p_version bigint)
returns public.credit_pricing_config
language plpgsql
stable
set search_path = ''
as $$
declare
    v_pricing public.credit_pricing_config;
begin
    if p_version is null then
        -- the active version is the newest: publishes are serialised, so versions are
        -- in commit order
        select * into v_pricing
        from public.credit_pricing_config
        order by version desc
        limit 1;
        if not found then
            perform credit_private.fail(
                'DC063', 'no pricing is published: publish a pricing config first', null,
                'credit_publish_pricing, or CreditManager.publish_pricing'
            );
        end if;
    else
        select * into v_pricing
        from public.credit_pricing_config
        where version = p_version;
        if not found then
            perform credit_private.fail(
                'DC064', format('pricing version %s does not exist', p_version),
                jsonb_build_object('version', p_version)
            );
        end if;
    end if;
    -- A config of more than a few models is stored compressed, and every -> on it would
    -- decompress it again; || returns it decompressed once, for the cost's many reads.
    v_pricing.config := v_pricing.config || '{}'::jsonb;
    return v_pricing;
end;
$$;
revoke all on function credit_private.pricing(bigint)
from public, anon, authenticated, service_role;
grant execute on function credit_private.pricing(bigint) to service_role;

create function credit_private.price(p_usage jsonb, p_version bigint)
returns public.credit_cost_result
language plpgsql
stable
set search_path = ''
as $$
declare
    v_pricing public.credit_pricing_config := credit_private.pricing(p_version);
    v_cost public.credit_cost_result;
begin
    -- p_usage from check_usage; the active version when p_version is null
    v_cost := credit_private.cost(v_pricing.config, p_usage);
    v_cost.pricing_version := v_pricing.version;
    return v_cost;
end;
$$;
revoke all on function credit_private.price(jsonb, bigint)
from public, anon, authenticated, service_role;
grant execute on function credit_private.price(jsonb, bigint) to service_role;

create function credit_private.price_job(p_job_name text, p_version bigint)
returns public.credit_cost_result
language plpgsql
stable
set search_path = ''
as $$
declare
    v_pricing public.credit_pricing_config := credit_private.pricing(p_version);
    v_credits bigint := (v_pricing.config -> 'fixed_jobs' ->> p_job_name)::bigint;
begin
    if v_credits is null then
        perform credit_private.fail(
            'DC062',
            format('no fixed-cost job %s in pricing version %s', to_jsonb(p_job_name),
                v_pricing.version),
            jsonb_build_object('job_name', p_job_name, 'pricing_version', v_pricing.version)
        );
    end if;
    return row(
        v_pricing.version, null::text, p_job_name, v_credits::numeric, v_credits,
        (v_pricing.config ->> 'min_balance')::bigint
    );
end;
$$;
revoke all on function credit_private.price_job(text, bigint)
from public, anon, authenticated, service_role;

create function public.credit_publish_pricing(p_config jsonb, p_label text default null)
returns public.credit_pricing_version
language plpgsql
volatile
-- definer: no API role may write credit_pricing_config directly
security definer
set search_path = ''
as $$
declare
    v_config jsonb := credit_private.check_pricing_config(p_config);
    v_pricing public.credit_pricing_config;
begin
    if length(p_label) not between 1 and 200 then
        perform credit_private.fail(
            'DC006', 'label must be 1 to 200 characters, or null',
            jsonb_build_object('argument', 'label')
        );
    end if;
    -- one publish at a time, so versions are in commit order and the newest is active;
    -- this mode still lets every charge read the config meanwhile
    lock table public.credit_pricing_config in share row exclusive mode;
    insert into public.credit_pricing_config (label, config, created_at)
    values (p_label, v_config, credit_private.clock())
    returning * into v_pricing;
    return row(v_pricing.version, v_pricing.label, v_pricing.config, true, v_pricing.created_at);
end;
$$;
revoke all on function public.credit_publish_pricing(jsonb, text)
from public, anon, authenticated, service_role;
grant execute on function public.credit_publish_pricing(jsonb, text) to service_role;

create function public.credit_get_pricing(p_version bigint default null)
returns public.credit_pricing_version
language plpgsql
stable
set search_path = ''
as $$
declare
    v_pricing public.credit_pricing_config := credit_private.pricing(p_version);
begin
    -- the active version when p_version is null
    return row(
        v_pricing.version, v_pricing.label, v_pricing.config,
        v_pricing.version = (select max(c.version) from public.credit_pricing_config as c),
        v_pricing.created_at
    );
end;
$$;
revoke all on function public.credit_get_pricing(bigint)
from public, anon, authenticated, service_role;
grant execute on function public.credit_get_pricing(bigint) to service_role;

create function public.credit_list_pricing_versions()
returns setof public.credit_pricing_version
language sql
stable
set search_path = ''
as $$
    -- newest (active) first
    select c.version, c.label, c.config, c.version = max(c.version) over (), c.created_at
    from public.credit_pricing_config as c
    order by c.version desc;
$$;
revoke all on function public.credit_list_pricing_versions()
from public, anon, authenticated, service_role;
grant execute on function public.credit_list_pricing_versions() to service_role;

create function public.credit_calculate_cost(p_metrics jsonb, p_version bigint default null)
returns public.credit_cost_result
language plpgsql
stable
set search_path = ''
as $$
begin
    -- what credit_deduct_usage would charge, writing nothing; with a version, how a past
    -- charge was priced: credit_calculate_cost(t.usage, t.pricing_version)
    return credit_private.price(credit_private.check_usage(p_metrics), p_version);
end;
$$;
revoke all on function public.credit_calculate_cost(jsonb, bigint)
from public, anon, authenticated, service_role;
grant execute on function public.credit_calculate_cost(jsonb, bigint) to service_role;

create function public.credit_deduct_usage(
    p_user_id text,
    p_metrics jsonb,
    p_metadata jsonb default '{}',
    p_idempotency_key text default null
)
returns public.credit_deduct_result
language plpgsql
volatile
-- definer: writes the ledger tables, which no API role may write directly
security definer
set search_path = ''
as $$
declare
    v_usage jsonb := credit_private.check_usage(p_metrics);
    v_metadata jsonb := credit_private.check_metadata(p_metadata);
    v_user_id text := credit_private.check_user_id(p_user_id);
    v_key text := credit_private.check_key(p_idempotency_key);
begin
    -- priced under the active version, with its min_balance as the floor
    return credit_private.deduct(
        v_user_id, 'usage', null, null, v_metadata, v_key,
        case when v_key is not null then jsonb_build_object(
            'usage', v_usage, 'metadata', v_metadata
        ) end,
        p_usage => v_usage
    );
end;
$$;
revoke all on function public.credit_deduct_usage(text, jsonb, jsonb, text)
from public, anon, authenticated, service_role;
grant execute on function public.credit_deduct_usage(text, jsonb, jsonb, text) to service_role;

create function public.credit_deduct_fixed(
    p_user_id text,
    p_job_name text,
    p_metadata jsonb default '{}',
    p_idempotency_key text default null
)
returns public.credit_deduct_result
language plpgsql
volatile
-- definer: writes the ledger tables, which no API role may write directly
security definer
set search_path = ''
as $$
declare
    v_job_name text := credit_private.check_job_name(p_job_name);
    v_metadata jsonb := credit_private.check_metadata(p_metadata);
    v_user_id text := credit_private.check_user_id(p_user_id);
    v_key text := credit_private.check_key(p_idempotency_key);
begin
    return credit_private.deduct(
        v_user_id, 'fixed_job', null, null, v_metadata, v_key,
        case when v_key is not null then jsonb_build_object(
            'job_name', v_job_name, 'metadata', v_metadata
        ) end,
        p_job_name => v_job_name
    );
end;
$$;
revoke all on function public.credit_deduct_fixed(text, text, jsonb, text)
from public, anon, authenticated, service_role;
grant execute on function public.credit_deduct_fixed(text, text, jsonb, text) to service_role;

create function public.credit_settle_usage(
    p_reservation_id uuid,
    p_metrics jsonb,
    p_metadata jsonb default '{}',
    p_idempotency_key text default null,
    p_max_overage numeric default null
)
returns public.credit_deduct_result
language plpgsql
volatile
-- definer: writes the ledger tables, which no API role may write directly
security definer
set search_path = ''
as $$
declare
    v_usage jsonb := credit_private.check_usage(p_metrics);
    v_metadata jsonb := credit_private.check_metadata(p_metadata);
    v_key text := credit_private.check_key(p_idempotency_key);
begin
    return credit_private.settle(
        p_reservation_id, null, v_usage, v_metadata, v_key, p_max_overage
    );
end;
$$;
revoke all on function public.credit_settle_usage(uuid, jsonb, jsonb, text, numeric)
from public, anon, authenticated, service_role;
grant execute on function public.credit_settle_usage(
    uuid, jsonb, jsonb, text, numeric
) to service_role;
