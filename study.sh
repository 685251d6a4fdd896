# Sourced by the run_*.sh / plot_*.sh scripts: the models of the study and how a comparison's
# folder is named. Every value can be overridden from the environment.
#
#   MODEL_A         the base model                       (EleutherAI/deep-ignorance-unfiltered)
#   MODEL_FILTERED  its data-filtered twin               (EleutherAI/deep-ignorance-e2e-strong-filter)
#   MODEL_CBLAT     its CB-LAT-unlearned twin            (EleutherAI/deep-ignorance-unfiltered-cb-lat)
#   COMPARE_WITH    space-separated list of model-B's to compare against MODEL_A (default: the two twins)
#   OUTPUTS_DIR, PLOTS_DIR, DATA_DIR                     (outputs, plots, data)
#   UV_RUN          how a tool is started                (uv run --quiet --script)
# It also brings common/env.sh (flag, switch, env_flag: environment variable -> tool flag) and makes
# Ctrl-C / SIGTERM stop the script with 130 / 143, as the tools do.
source "$(dirname "${BASH_SOURCE[0]}")/common/env.sh"
on_signals
MODEL_A="${MODEL_A:-EleutherAI/deep-ignorance-unfiltered}"
MODEL_FILTERED="${MODEL_FILTERED:-EleutherAI/deep-ignorance-e2e-strong-filter}"
MODEL_CBLAT="${MODEL_CBLAT:-EleutherAI/deep-ignorance-unfiltered-cb-lat}"
COMPARE_WITH="${COMPARE_WITH:-$MODEL_FILTERED $MODEL_CBLAT}"
OUTPUTS_DIR="${OUTPUTS_DIR:-outputs}"
PLOTS_DIR="${PLOTS_DIR:-plots}"
DATA_DIR="${DATA_DIR:-data}"
UV_RUN="${UV_RUN:-uv run --quiet --script}"

# model_name SPEC -> the name every tool gives a model's results (common/helpers.py's model_name):
# a hub ID org/name -> org_name; a local folder -> its name, or its parent's name when the folder
# is an unlearned_model (unlearn.py's layout). A spec is a folder when it exists as one, starts
# with . / or ~, or is not shaped like a hub ID (one slash); paths are made absolute, links kept.
model_name() {
  local spec="$1" path name
  if [ ! -d "$spec" ] && [[ "$spec" != [./~]* ]] && [[ "$spec" =~ ^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9_.-]+$ ]]; then
    printf '%s\n' "${spec/\//_}"
    return
  fi
  path="${spec/#\~/$HOME}"
  if [ -d "$path" ]; then path="$(cd "$path" && pwd -L)"; else path="${path%/}"; fi
  name="${path##*/}"
  if [ "$name" = unlearned_model ] && [ -n "${path%/*}" ]; then path="${path%/*}"; name="${path##*/}"; fi
  printf '%s\n' "${name:-root}"
}

# comparison_name A B -> "<model_name A>_vs_<model_name B>", the names the evaluation and attack
# tools use (report.py matches the two sides to them), e.g.
# EleutherAI_deep-ignorance-unfiltered_vs_EleutherAI_deep-ignorance-e2e-strong-filter,
# demo-unfiltered_vs_demo-unfiltered-cb-lat, demo-unfiltered_vs_demo-unfiltered__ga (an unlearned_model)
comparison_name() {
  printf '%s_vs_%s\n' "$(model_name "$1")" "$(model_name "$2")"
}
