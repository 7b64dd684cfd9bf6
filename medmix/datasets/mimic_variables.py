"""The 46 hourly EHR variables of the MIMIC-IV-MM / MIMIC-III cohorts, with their MIMIC sources.

The MedMIX paper states "46 EHR clinical variables" without listing them; this list is OUR
definition: standard ICU vitals, Glasgow coma scale, ventilation settings and routine labs, chosen
as in common MIMIC benchmarks. Item ids follow the MIMIC ``d_items`` / ``d_labitems`` dictionaries
(MetaVision ids 22xxxx are shared by MIMIC-IV and MIMIC-III; CareVue ids, MIMIC-III only, are in
``carevue``; lab ids 50xxx/51xxx are shared). Verify them against the dictionaries of your release.
Per-stay EHR files must have one column per ``name`` (hourly rows; an optional ``hour`` /
``charttime`` column is ignored by the reader).
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from medmix.table_text import markdown_table


@dataclass(frozen=True)
class Variable:
    name: str
    table: str  # MIMIC source table (icu.chartevents, icu.outputevents, hosp.labevents)
    itemids: tuple[int, ...]
    unit: str
    carevue: tuple[int, ...] = ()  # additional MIMIC-III CareVue item ids
    note: str = ""


CHART, OUTPUT, LAB = "icu.chartevents", "icu.outputevents", "hosp.labevents"

EHR_VARIABLES: tuple[Variable, ...] = (
    # Vital signs and bedside measurements (chartevents)
    Variable("heart_rate", CHART, (220045,), "bpm", (211,)),
    Variable("sbp", CHART, (220050, 220179), "mmHg", (51, 442, 455, 6701), "arterial or non-invasive"),
    Variable("dbp", CHART, (220051, 220180), "mmHg", (8368, 8440, 8441, 8555)),
    Variable("mbp", CHART, (220052, 220181, 225312), "mmHg", (52, 443, 456, 6702)),
    Variable("resp_rate", CHART, (220210, 224690), "insp/min", (615, 618)),
    Variable("temperature", CHART, (223762, 223761), "degC", (676, 678), "223761/678 are Fahrenheit: convert"),
    Variable("spo2", CHART, (220277,), "%", (646,)),
    Variable("fio2", CHART, (223835,), "fraction", (3420, 190), "scale percentages to 0-1"),
    Variable("gcs_eye", CHART, (220739,), "score", (184,)),
    Variable("gcs_verbal", CHART, (223900,), "score", (723,)),
    Variable("gcs_motor", CHART, (223901,), "score", (454,)),
    Variable("gcs_total", CHART, (220739, 223900, 223901), "score", (198,), "sum of the three components"),
    Variable("glucose_bedside", CHART, (225664, 220621, 226537), "mg/dL", (807, 811, 1529, 3744, 3745)),
    Variable("cvp", CHART, (220074,), "mmHg", (113,)),
    Variable("weight", CHART, (226512, 224639), "kg", (762, 763, 3580, 3723)),
    Variable("height", CHART, (226730,), "cm", (920, 1394, 3486, 4187), "inches in 920/1394/4187: convert"),
    Variable("urine_output", OUTPUT, (226559, 226560, 226561, 226584, 226563, 226564, 226565, 226567, 226557,
                                      226558), "mL/h", (40055, 40056, 40057, 40069, 40085, 40094, 40715, 43175),
             "hourly sum"),
    Variable("peep", CHART, (220339, 224700), "cmH2O", (60, 437, 505, 506, 686)),
    Variable("tidal_volume", CHART, (224685,), "mL", (681, 682)),
    # Laboratory values (labevents; same item ids in MIMIC-III and MIMIC-IV)
    Variable("sodium", LAB, (50983,), "mEq/L"),
    Variable("potassium", LAB, (50971,), "mEq/L"),
    Variable("chloride", LAB, (50902,), "mEq/L"),
    Variable("bicarbonate", LAB, (50882,), "mEq/L"),
    Variable("anion_gap", LAB, (50868,), "mEq/L"),
    Variable("bun", LAB, (51006,), "mg/dL"),
    Variable("creatinine", LAB, (50912,), "mg/dL"),
    Variable("glucose", LAB, (50931,), "mg/dL"),
    Variable("calcium", LAB, (50893,), "mg/dL"),
    Variable("magnesium", LAB, (50960,), "mg/dL"),
    Variable("phosphate", LAB, (50970,), "mg/dL"),
    Variable("hemoglobin", LAB, (51222,), "g/dL"),
    Variable("hematocrit", LAB, (51221,), "%"),
    Variable("platelets", LAB, (51265,), "K/uL"),
    Variable("wbc", LAB, (51301,), "K/uL"),
    Variable("inr", LAB, (51237,), "ratio"),
    Variable("pt", LAB, (51274,), "s"),
    Variable("ptt", LAB, (51275,), "s"),
    Variable("lactate", LAB, (50813,), "mmol/L"),
    Variable("ph", LAB, (50820,), "units"),
    Variable("po2", LAB, (50821,), "mmHg"),
    Variable("pco2", LAB, (50818,), "mmHg"),
    Variable("base_excess", LAB, (50802,), "mEq/L"),
    Variable("albumin", LAB, (50862,), "g/dL"),
    Variable("bilirubin_total", LAB, (50885,), "mg/dL"),
    Variable("alt", LAB, (50861,), "IU/L"),
    Variable("ast", LAB, (50878,), "IU/L"),
)

EHR_VARIABLE_NAMES: tuple[str, ...] = tuple(v.name for v in EHR_VARIABLES)


def variables_markdown() -> str:
    """The variable table for medmix/datasets/README.md."""
    rows = [[i, f"`{v.name}`", v.table, ", ".join(map(str, v.itemids)), ", ".join(map(str, v.carevue)) or "-", v.unit,
             v.note] for i, v in enumerate(EHR_VARIABLES, 1)]
    return markdown_table(pd.DataFrame(rows, columns=["#", "column", "MIMIC table", "item ids (MIMIC-IV / MetaVision)",
                                                      "MIMIC-III CareVue ids", "unit", "note"]))
